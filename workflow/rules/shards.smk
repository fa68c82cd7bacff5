# Gathering the shards of the per-image stages (dataset.shards > 1). Each per-image job writes
# one shard's store (or, for an evaluation, its confusions); these local jobs combine them into
# the file every consumer reads: a store is a view over its shards (`wsss combine`: an index
# and HDF5 external links, no array copied), an evaluation the sum of the shards' confusions.

_STORES = {  # name -> (store kind, the combined file)
    "cams": ("cams", f"{RESULTS}/{{variant}}/cams/{{split}}.h5"),
    "labels": ("labels", f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.h5"),
    "train_labels": ("labels", f"{RESULTS}/{{variant}}/{{refiner}}/train_labels/{{split}}.h5"),
    "deeplab": ("labels", f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/{{kind}}/{{split}}.h5"),
}


if SHARDS > 1:
    for _name, (_kind, _path) in _STORES.items():

        rule:
            name:
                f"combine_{_name}"
            output:
                _path,
            input:
                parts=gathered(_path),
                code=code("wsss.cli.combine"),
            params:
                store=_kind,
                dataset=DATASET_JSON,
            wildcard_constraints:
                kind=one_of(DEEPLAB_KINDS),
            localrule: True
            log:
                gather_side(_path, LOGS, "log"),
            benchmark:
                gather_side(_path, BENCH, "tsv")
            conda:
                ENV
            shell:
                "wsss combine --kind {params.store} --dataset {params.dataset:q}"
                " --split {wildcards.split} --parts {input.parts} --out {output} > {log} 2>&1"

    for _name, _path in {
        "seeds_eval": f"{RESULTS}/{{variant}}/cams/{{split}}.eval.json",
        "labels_eval": f"{RESULTS}/{{variant}}/{{refiner}}/labels/{{split}}.eval.json",
        "deeplab_eval": f"{RESULTS}/{{variant}}/{{refiner}}/deeplab/{{kind}}/{{split}}.eval.json",
    }.items():

        rule:
            name:
                f"combine_{_name}"
            output:
                _path,
            input:
                parts=gathered(_path),
                code=code("wsss.cli.evaluate"),
            params:
                dataset=DATASET_JSON,
            wildcard_constraints:
                kind=one_of(DEEPLAB_KINDS),
            localrule: True
            log:
                gather_side(_path, LOGS, "log"),
            benchmark:
                gather_side(_path, BENCH, "tsv")
            conda:
                ENV
            shell:
                "wsss eval-combine --dataset {params.dataset:q} --parts {input.parts}"
                " --out {output} > {log} 2>&1"
