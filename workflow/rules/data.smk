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


rule dataset_index:
    output:
        f"{RESULTS}/data/index.json",
    input:
        data=rules.synthetic_data.output if config["dataset"]["kind"] == "synthetic" else [],
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
