# Evaluation stage: seeds (background-threshold sweep over CAMs) and pseudo-labels against the
# ground truth; small JSON files next to what they judge.


rule evaluate_seeds:
    output:
        per_image(f"{RESULTS}/{{variant}}/cams/{{split}}.eval.json"),
    input:
        cams=f"{RESULTS}/{{variant}}/cams/{{split}}.h5",
        code=code("wsss.cli.evaluate"),
    params:
        shard=shard_arg(partial=True),
        dataset=DATASET_JSON,
        evaluation=as_json(config["evaluation"]),
    threads: POOL_THREADS
    resources:
        mem_mb=4000,
    log:
        per_image_side(f"{LOGS}/evaluate_seeds/{{variant}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/evaluate_seeds/{{variant}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss eval-seeds --dataset {params.dataset:q} --cams {input.cams} --split {wildcards.split}"
        " --variant {wildcards.variant} --evaluation {params.evaluation:q} --threads {threads}"
        " {params.shard} --out {output} > {log} 2>&1"


rule failure_modes:
    output:
        f"{RESULTS}/{{variant}}/cams/{{split}}.failure_modes.json",
    input:
        cams=f"{RESULTS}/{{variant}}/cams/{{split}}.h5",
        seeds_eval=f"{RESULTS}/{{variant}}/cams/{{split}}.eval.json",
        code=code("wsss.cli.diagnose"),
    params:
        dataset=DATASET_JSON,
    resources:
        mem_mb=2000,
    log:
        f"{LOGS}/failure_modes/{{variant}}/{{split}}.log",
    benchmark:
        f"{BENCH}/failure_modes/{{variant}}/{{split}}.tsv"
    conda:
        ENV
    shell:
        "wsss failure-modes --dataset {params.dataset:q} --cams {input.cams}"
        " --split {wildcards.split} --variant {wildcards.variant}"
        " --seeds-eval {input.seeds_eval} --out {output} > {log} 2>&1"


rule failure_modes_labels:
    output:
        f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.failure_modes.json",
    input:
        labels=f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5",
        code=code("wsss.cli.diagnose"),
    params:
        dataset=DATASET_JSON,
    resources:
        mem_mb=2000,
    log:
        f"{LOGS}/failure_modes_labels/{{variant}}/{{refiner}}/{{split}}.log",
    benchmark:
        f"{BENCH}/failure_modes_labels/{{variant}}/{{refiner}}/{{split}}.tsv"
    conda:
        ENV
    shell:
        "wsss failure-modes --dataset {params.dataset:q} --labels {input.labels}"
        " --split {wildcards.split} --variant {wildcards.variant} --stage {wildcards.refiner}"
        " --out {output} > {log} 2>&1"


rule evaluate_labels:
    output:
        per_image(f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.eval.json"),
    input:
        labels=f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5",
        code=code("wsss.cli.evaluate"),
    params:
        shard=shard_arg(partial=True),
        dataset=DATASET_JSON,
    threads: POOL_THREADS
    resources:
        mem_mb=4000,
    log:
        per_image_side(f"{LOGS}/evaluate_labels/{{variant}}/{{refiner}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/evaluate_labels/{{variant}}/{{refiner}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss eval-labels --dataset {params.dataset:q} --labels {input.labels}"
        " --split {wildcards.split} --variant {wildcards.variant} --stage {wildcards.refiner}"
        " --threads {threads} {params.shard} --out {output} > {log} 2>&1"
