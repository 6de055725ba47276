"""The operator dashboard (Streamlit): `streamlit run streamlit_app.py`. It reads and acts on the
scheduler only through the HTTP API, so it runs anywhere the API is reachable."""
