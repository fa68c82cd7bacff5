"""The workflow's report: the summary table and one module per figure.

- `summary`: the variants x stages table (CSV, Markdown, failure modes) and its bar chart.
- `bars`: mIoU bars; `heatmap`: per-class IoU; `examples`: example picks and their grid;
  `curves`: training curves; `figures`: the three figures of the report_figures rule.
- `style`: what the figures share (stage order from the registry, colours, legends, saving).

Deliberately empty of imports: a stage that draws one figure does not import the others (or
pyplot).
"""
