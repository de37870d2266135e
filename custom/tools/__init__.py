"""Tools built on the library, at the top of its layers: the demo (``python -m custom.tools.demo``), the demo data
set builder (``demo_data``), the data-list command (``datalist``), the bundle zip (``packaging``), the
task-interference probe (``interference``) and the task-statistics command (``task_statistics``)."""

from __future__ import annotations
