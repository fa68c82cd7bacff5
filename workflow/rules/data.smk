# Dataset stage: generate the embedded benchmark (synthetic only), then validate the dataset and
# write its index (ids as strings, image-level labels, sizes) that every later stage reads.


rule synthetic_data:
    output:
        directory(f"{RESULTS}/data/voc"),
    input:
        code("wsss.cli.synthetic"),
    params:
        generator=as_json(config["dataset"]["synthetic"]),
    threads: CPU_THREADS
    log:
        f"{LOGS}/synthetic_data.log",
    benchmark:
        f"{BENCH}/synthetic_data.tsv"
    conda:
        ENV
    shell:
        "wsss synthetic --config {params.generator:q} --threads {threads} --out {output}"
        " > {log} 2>&1"


# COCO: the instance annotations become semantic masks once (wsss.data.coco: classes by COCO id,
# smaller instance on top, crowd regions ignored); the benchmark in COCO layout (dataset.layout)
# is first written that way from the generated set, so its DAG takes the same path.
if reads_coco():

    rule coco_layout:
        output:
            directory(f"{RESULTS}/data/coco_layout"),
        input:
            data=rules.synthetic_data.output,
            code=code("wsss.cli.coco"),
        params:
            splits=as_json(config["dataset"]["splits"]),
        log:
            f"{LOGS}/coco_layout.log",
        benchmark:
            f"{BENCH}/coco_layout.tsv"
        conda:
            ENV
        shell:
            "wsss coco-layout --voc-root {input.data} --splits {params.splits:q}"
            " --polygon-every 3 --out {output} > {log} 2>&1"


    rule coco_masks:
        output:
            directory(COCO_DATA),
        input:
            source=coco_inputs,
            code=code("wsss.cli.coco"),
        params:
            root=coco_source()[0],
            splits=as_json(coco_source()[1]),
            image_dirs=as_json(coco_image_dirs()),
            drop=(" ".join(["--drop-empty", *config["dataset"]["coco"]["drop_empty"]])
                  if config["dataset"]["coco"]["drop_empty"] is not None else ""),
        threads: CPU_THREADS
        resources:
            mem_mb=16000,  # COCO's train instances file, parsed
            runtime=240,
        log:
            f"{LOGS}/coco_masks.log",
        benchmark:
            f"{BENCH}/coco_masks.tsv"
        conda:
            ENV
        shell:
            "wsss coco-masks --root {params.root:q} --splits {params.splits:q}"
            " --image-dirs {params.image_dirs:q} {params.drop} --threads {threads} --out {output}"
            " > {log} 2>&1"


rule dataset_index:
    output:
        f"{RESULTS}/data/index.json",
    input:
        data=dataset_inputs,
        code=code("wsss.cli.index"),
    params:
        dataset=DATASET_JSON,
        splits=" ".join(config["dataset"]["splits"]),
    threads: CPU_THREADS
    log:
        f"{LOGS}/dataset_index.log",
    benchmark:
        f"{BENCH}/dataset_index.tsv"
    conda:
        ENV
    shell:
        "wsss index --dataset {params.dataset:q} --splits {params.splits}"
        " --threads {threads} --out {output} > {log} 2>&1"
