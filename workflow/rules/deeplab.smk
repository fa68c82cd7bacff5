# Retraining: a DeepLab-ASPP per (variant, refiner) pair of run.deeplab, trained on that pair's
# pseudo-labels of the train split, predicting deeplab.splits with and without DeepLab's CRF.



rule deeplab_train:
    output:
        f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/deeplab.pt",
    input:
        labels=f"{RESULTS}/{{variant}}/{{refiner}}/labels/{TRAIN_SPLIT}.h5",
        pretrained=pretrained_inputs(config["deeplab"]["model"]),
        code=code("wsss.cli.deeplab_train", *backbone_modules(config["deeplab"])),
    params:
        block=deeplab_train_block,
        dataset=DATASET_JSON,
        split=TRAIN_SPLIT,
        device=config["device"],
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    threads: TORCH_THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    log:
        f"{LOGS}/deeplab_train/{{variant}}/{{refiner}}.log",
    benchmark:
        f"{BENCH}/deeplab_train/{{variant}}/{{refiner}}.tsv"
    conda:
        ENV
    shell:
        "wsss deeplab-train --dataset {params.dataset:q} --split {params.split}"
        " --labels {input.labels} --config {params.block:q} --device {params.device}"
        " --threads {threads} --out {params.out_dir} > {log} 2>&1"


rule deeplab_predict:
    output:
        pred=per_image(f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/pred/{{split}}.h5"),
        crf=per_image(f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/pred_crf/{{split}}.h5"),
    input:
        weights=f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/deeplab.pt",
        code=code("wsss.cli.deeplab_predict", *backbone_modules(config["deeplab"])),
    params:
        shard=shard_arg(),
        block=as_json(config["deeplab"]),
        dataset=DATASET_JSON,
        device=config["device"],
    threads: CPU_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    log:
        per_image_side(f"{LOGS}/deeplab_predict/{{variant}}/{{refiner}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/deeplab_predict/{{variant}}/{{refiner}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss deeplab-predict --dataset {params.dataset:q} --split {wildcards.split}"
        " --weights {input.weights} --config {params.block:q} --device {params.device}"
        " --threads {threads} {params.shard} --out {output.pred} --out-crf {output.crf} > {log} 2>&1"


rule evaluate_deeplab:
    output:
        per_image(f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/{{kind}}/{{split}}.eval.json"),
    input:
        labels=f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/{{kind}}/{{split}}.h5",
        code=code("wsss.cli.evaluate"),
    params:
        shard=shard_arg(partial=True),
        dataset=DATASET_JSON,
        stage=lambda wildcards: f"deeplab_{wildcards.refiner}{DEEPLAB_KINDS[wildcards.kind]}",
    wildcard_constraints:
        kind=one_of(DEEPLAB_KINDS),
    threads: POOL_THREADS
    resources:
        mem_mb=4000,
    log:
        per_image_side(f"{LOGS}/evaluate_deeplab/{{variant}}/{{refiner}}/{{kind}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/evaluate_deeplab/{{variant}}/{{refiner}}/{{kind}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss eval-labels --dataset {params.dataset:q} --labels {input.labels}"
        " --split {wildcards.split} --variant {wildcards.variant} --stage {params.stage}"
        " --threads {threads} {params.shard} --out {output} > {log} 2>&1"
