# Refinement stage: CAMs -> pseudo-labels. One rule per refiner kind; each refiner variant is a
# block under `refiners:` and a value of the {refiner} wildcard.


rule refine_crf:
    output:
        f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5",
    input:
        unpack(crf_inputs),
    params:
        block=refiner_block,
        dataset=DATASET_JSON,
        seeds=seeds_eval_arg,
    wildcard_constraints:
        refiner=one_of(refiners_of("crf")),
    threads: CPU_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        f"{LOGS}/refine_crf/{{variant}}/{{refiner}}/{{split}}.log",
    benchmark:
        f"{BENCH}/refine_crf/{{variant}}/{{refiner}}/{{split}}.tsv"
    conda:
        ENV
    shell:
        "wsss crf --dataset {params.dataset:q} --cams {input.cams} --split {wildcards.split}"
        " --config {params.block:q} {params.seeds} --threads {threads} --out {output}"
        " > {log} 2>&1"
