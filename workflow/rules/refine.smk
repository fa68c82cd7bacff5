# Refinement stage: CAMs -> pseudo-labels. One rule per refiner kind; each refiner variant is a
# block under `refiners:` and a value of the {refiner} wildcard.


rule refine_crf:
    output:
        per_image(f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5"),
    input:
        unpack(crf_inputs),
    params:
        shard=shard_arg(),
        block=refiner_block,
        dataset=DATASET_JSON,
        seeds=seeds_eval_arg,
    wildcard_constraints:
        refiner=one_of(refiners_of("crf")),
    threads: POOL_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        per_image_side(f"{LOGS}/refine_crf/{{variant}}/{{refiner}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/refine_crf/{{variant}}/{{refiner}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss crf --dataset {params.dataset:q} --cams {input.cams} --split {wildcards.split}"
        " --config {params.block:q} {params.seeds} --threads {threads} {params.shard} --out {output}"
        " > {log} 2>&1"


# Learned refiners (PSA, IRN): training labels from the CAMs of the training split, a network
# trained once per (CAM variant, refiner variant), then pseudo-labels for each evaluated split.
LEARNED = refiners_where("learned")
TRAIN_SPLIT = config["dataset"]["train_split"]


rule refiner_train_labels:
    output:
        per_image(f"{RESULTS}/{{variant}}/{{refiner}}/train_labels/{{split}}.h5"),
    input:
        cams=f"{RESULTS}/{{variant}}/cams/{{split}}.h5",
        code=refiner_code,
    params:
        shard=shard_arg(),
        block=refiner_label_block,
        dataset=DATASET_JSON,
    wildcard_constraints:
        refiner=one_of(LEARNED),
    threads: POOL_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        per_image_side(f"{LOGS}/refiner_train_labels/{{variant}}/{{refiner}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/refiner_train_labels/{{variant}}/{{refiner}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss refine-labels --dataset {params.dataset:q} --cams {input.cams}"
        " --split {wildcards.split} --config {params.block:q} --threads {threads}"
        " {params.shard} --out {output} > {log} 2>&1"


rule refiner_train:
    output:
        f"{RESULTS}/{{variant}}/{{refiner}}/network.pt",
    input:
        labels=f"{RESULTS}/{{variant}}/{{refiner}}/train_labels/{TRAIN_SPLIT}.h5",
        classifier=f"{RESULTS}/{{variant}}/classifier.pt",
        pretrained=refiner_pretrained,
        code=refiner_code,
    params:
        block=refiner_train_block,
        dataset=DATASET_JSON,
        split=TRAIN_SPLIT,
        device=config["device"],
    wildcard_constraints:
        refiner=one_of(LEARNED),
    threads: TORCH_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=360,
    log:
        f"{LOGS}/refiner_train/{{variant}}/{{refiner}}.log",
    benchmark:
        f"{BENCH}/refiner_train/{{variant}}/{{refiner}}.tsv"
    conda:
        ENV
    shell:
        "wsss refine-train --dataset {params.dataset:q} --split {params.split}"
        " --labels {input.labels} --config {params.block:q} --classifier {input.classifier}"
        " --device {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule refine_learned:
    output:
        per_image(f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5"),
    input:
        cams=f"{RESULTS}/{{variant}}/cams/{{split}}.h5",
        weights=f"{RESULTS}/{{variant}}/{{refiner}}/network.pt",
        code=refiner_code,
    params:
        shard=shard_arg(),
        block=refiner_block,
        dataset=DATASET_JSON,
        device=config["device"],
    wildcard_constraints:
        refiner=one_of(LEARNED),
    threads: CPU_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    log:
        per_image_side(f"{LOGS}/refine_learned/{{variant}}/{{refiner}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/refine_learned/{{variant}}/{{refiner}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss refine --dataset {params.dataset:q} --cams {input.cams} --split {wildcards.split}"
        " --config {params.block:q} --weights {input.weights} --device {params.device}"
        " --threads {threads} {params.shard} --out {output} > {log} 2>&1"


# Refiner kinds that need no network of their own and read only the CAM store (a single-stage
# method's segmentation head: its `seg` predictions become pseudo-labels like any refiner's).
DIRECT = [r for r in refiners_where("learned", False) if r not in refiners_of("crf")]


rule refine_direct:
    output:
        per_image(f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5"),
    input:
        cams=f"{RESULTS}/{{variant}}/cams/{{split}}.h5",
        code=refiner_code,
    params:
        shard=shard_arg(),
        block=refiner_block,
        dataset=DATASET_JSON,
        device=config["device"],
    wildcard_constraints:
        refiner=one_of(DIRECT),
    threads: POOL_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        per_image_side(f"{LOGS}/refine_direct/{{variant}}/{{refiner}}/{{split}}.log"),
    benchmark:
        per_image_side(f"{BENCH}/refine_direct/{{variant}}/{{refiner}}/{{split}}.tsv")
    conda:
        ENV
    shell:
        "wsss refine --dataset {params.dataset:q} --cams {input.cams} --split {wildcards.split}"
        " --config {params.block:q} --device {params.device} --threads {threads}"
        " {params.shard} --out {output} > {log} 2>&1"
