# Summary: every evaluation of the run as one variants x stages table and a bar chart.


rule summary:
    output:
        csv=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Summary"),
        md=f"{RESULTS}/summary.md",
        png=report(f"{RESULTS}/summary.png", caption="../report/summary.rst", category="Summary"),
    input:
        evals=evaluation_targets(),
        diagnostics=diagnostic_targets(),
        code=code("report.py"),
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
