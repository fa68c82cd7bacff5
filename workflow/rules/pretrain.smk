# Pretraining: the benchmark's stand-in for ImageNet. One network per backbone, trained on the
# synthetic classification corpus (wsss.data.synthetic.corpus; its images are in no WSSS split)
# and written to results/pretrained/<backbone>.pt, outside any dataset's folder: it is shared by
# every dataset and variant. A backbone block with `pretrained: synthetic` reads it, and the
# rule that trains that block lists it as an input (pretrained_inputs in common.smk), so a
# change to the corpus or the recipe reruns exactly what starts from these weights.


rule pretrain:
    output:
        weights=f"{PRETRAINED}/{{backbone}}.pt",
        # held-out accuracy, classes, time; the per-epoch curve (the loop's checkpoint and log
        # beside them are not outputs, so a killed job resumes)
        summary=f"{PRETRAINED}/{{backbone}}.json",
        curve=f"{PRETRAINED}/{{backbone}}.curve.csv",
    input:
        code=lambda w: code("wsss.cli.pretrain", registry.component("backbone", w.backbone).module),
    params:
        block=lambda w: as_json(pretrain_block(w.backbone)),
        device=config["device"],
    wildcard_constraints:
        backbone=one_of(registry.names("backbone")),
    # a ViT learns the corpus slowly (README, "FSR on the benchmark"): one thread, so it runs
    # beside the one-thread trainings of the other methods, and after the ResNet every other
    # network waits for
    threads: lambda w: 1 if backbone_family(w.backbone) == "vit" else CPU_THREADS
    priority: lambda w: 0 if backbone_family(w.backbone) == "vit" else 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    log:
        f"{PRETRAINED}/logs/{{backbone}}.log",
    benchmark:
        f"{PRETRAINED}/benchmarks/{{backbone}}.tsv"
    conda:
        ENV
    shell:
        "wsss pretrain --backbone {wildcards.backbone} --config {params.block:q}"
        " --device {params.device} --threads {threads} --out {output.weights} > {log} 2>&1"
