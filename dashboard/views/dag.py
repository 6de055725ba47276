"""DAG view: the dependency graph around one task, coloured by status. An arrow points from a
dependency to the task that waits for it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import ui
from dashboard.api_client import NotFound
from dashboard.formatting import STATUS_COLORS


def to_dot(graph: dict[str, Any], focus: str) -> str:
    """Graphviz source: one box per task, filled with its status colour; the focus in bold."""
    lines = [
        "digraph tasks {",
        '  rankdir=LR; bgcolor="transparent";',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
    ]
    for node in graph["nodes"]:
        color = STATUS_COLORS.get(node["status"], "#cccccc")
        bold = ", penwidth=3" if node["task_id"] == focus else ""
        label = f"{node['task_id']}\\n{node['task_type']} · {node['status']}"
        lines.append(f'  "{node["task_id"]}" [label="{label}", fillcolor="{color}"{bold}];')
    lines += [f'  "{e["from"]}" -> "{e["to"]}";' for e in graph["edges"]]
    lines.append("}")
    return "\n".join(lines)


def render() -> None:
    st.title("Dependency graph")
    task_id = st.text_input("Task id", key="task_id", bind="query-params", placeholder="task id")
    if not task_id:
        st.info("Enter the id of a task to see what it depends on and what depends on it.")
        return
    ui.live(lambda: _graph(task_id.strip()))


def _graph(task_id: str) -> None:
    with ui.api_errors("load the graph"):
        try:
            graph = ui.client().graph(task_id)
        except NotFound:
            st.warning(f"No task has the id `{task_id}`.")
            return
        st.graphviz_chart(to_dot(graph, task_id))
        if graph.get("truncated"):
            st.caption(f"The graph is larger: showing {len(graph['nodes'])} of its tasks.")
        st.markdown(f"{len(graph['nodes'])} tasks, {len(graph['edges'])} edges")
        ui.color_legend(STATUS_COLORS)
        ui.task_link(task_id, label=f"Open {task_id}")
        ui.updated_caption()


if __name__ == "__main__":
    render()
