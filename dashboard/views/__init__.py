"""One module per page. Streamlit runs each as a script (with __name__ == "__main__"), so each
ends by calling its render(); importing one renders nothing."""
