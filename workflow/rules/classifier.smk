# Classifier stage: one network per method variant, trained on the dataset's train split.
# Resumable: checkpoint.pt beside classifier.pt is not an output, so it survives a failed or
# killed job and the next run continues from it.


rule train_classifier:
    output:
        f"{RESULTS}/{{variant}}/classifier.pt",
    input:
        index=rules.dataset_index.output,
        init_from=init_from_input,
        pretrained=lambda w: pretrained_inputs(config["methods"][w.variant]),
        code=method_code("train"),
    params:
        block=method_block,
        dataset=DATASET_JSON,
        split=config["dataset"]["train_split"],
        device=config["device"],
        init_from=init_from_arg,
    threads: TORCH_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    log:
        f"{LOGS}/train_classifier/{{variant}}.log",
    benchmark:
        f"{BENCH}/train_classifier/{{variant}}.tsv"
    conda:
        ENV
    shell:
        "wsss train --dataset {params.dataset:q} --index {input.index} --split {params.split}"
        " --variant {wildcards.variant} --config {params.block:q} --device {params.device}"
        " {params.init_from} --threads {threads} --out $(dirname {output}) > {log} 2>&1"
