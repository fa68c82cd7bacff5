# Summary: every evaluation of the run as one variants x stages table and a bar chart; the
# report's other figures (per-class IoU, qualitative grid, training curves).


rule summary:
    output:
        csv=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Summary"),
        md=f"{RESULTS}/summary.md",
        png=report(f"{RESULTS}/summary.png", caption="../report/miou.rst", category="Summary"),
    input:
        evals=evaluation_targets(),
        diagnostics=diagnostic_targets(),
        code=code("wsss.cli.summary"),
    params:
        title=f"WSSS results on {DATASET}",
    localrule: True
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{BENCH}/summary.tsv"
    conda:
        ENV
    shell:
        "wsss summary --evals {input.evals} --csv {output.csv} --md {output.md}"
        " --png {output.png} --diagnostics {input.diagnostics} --title {params.title:q}"
        " > {log} 2>&1"


rule report_figures:
    output:
        heatmap=report(REPORT_FIGURES["heatmap"], caption="../report/class_iou.rst",
                       category="Per class"),
        examples=report(REPORT_FIGURES["examples"], caption="../report/examples.rst",
                        category="Examples"),
        curves=report(REPORT_FIGURES["curves"], caption="../report/training_curves.rst",
                      category="Training"),
    input:
        evals=evaluation_targets(),
        examples=example_inputs(),
        trained=[out for _, _, out in training_logs()],
        index=rules.dataset_index.output,
        code=code("wsss.cli.figures"),
    params:
        dataset=DATASET_JSON,
        columns=as_json(example_columns()),
        logs=as_json([[label, log] for label, log, _ in training_logs()]),
        split=config["report"]["example_split"],
        examples=config["report"]["examples"],
    localrule: True
    log:
        f"{LOGS}/report_figures.log",
    benchmark:
        f"{BENCH}/report_figures.tsv"
    conda:
        ENV
    shell:
        "wsss figures --dataset {params.dataset:q} --evals {input.evals}"
        " --columns {params.columns:q} --logs {params.logs:q} --split {params.split}"
        " --examples {params.examples} --index {input.index} --heatmap {output.heatmap}"
        " --grid {output.examples} --curves {output.curves} > {log} 2>&1"
