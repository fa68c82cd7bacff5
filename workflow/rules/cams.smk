# CAM stage: multi-scale + flip class activation maps of a split, to HDF5 (one group per image).


rule cams:
    output:
        per_image(f"{RESULTS}/{{variant}}/cams/{{split}}.h5"),
    input:
        classifier=rules.train_classifier.output,
        index=rules.dataset_index.output,
        code=method_code("cams"),
    params:
        block=method_block,
        dataset=DATASET_JSON,
        device=config["device"],
        shard=shard_arg(),
    threads: TORCH_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    log:
        per_image_side(f"{LOGS}/cams/{{variant}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/cams/{{variant}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss cams --dataset {params.dataset:q} --index {input.index} --split {wildcards.split}"
        " --variant {wildcards.variant} --config {params.block:q} --checkpoint {input.classifier}"
        " --device {params.device} --threads {threads} {params.shard} --out {output}"
        " > {log} 2>&1"
