# WSSS workflow: dataset -> classifier per method variant -> CAMs -> seeds / refiners -> evaluation
# -> DeepLab retraining on chosen pseudo-labels -> summary and report figures. Stage rules live in workflow/rules/, one file per stage; helpers in common.smk.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default experiment, not a base layer: with `--configfile` only the files
# given are read (in order), so a VOC run never inherits the benchmark's tiny settings where
# voc.yaml is silent. An overlay goes after its main config: --configfile config.yaml overlay.yaml
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# a GPU is a per-node resource: on a cluster each job gets its own, locally they are shared
resource_scopes:
    gpu="local",


# common.smk validates the config against workflow/schemas/config.schema.yaml, assembled with
# the components' own schemas (wsss.schema), and fills in the defaults
include: "workflow/rules/common.smk"


# dataset.shards: each per-image stage as that many jobs over disjoint id ranges (common.smk)
scattergather:
    shards=SHARDS,


wildcard_constraints:
    variant=one_of(config["methods"]),
    split=one_of(config["dataset"]["splits"]),
    refiner=one_of(config["refiners"]),
    scatteritem=r"\d+-of-\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/deeplab.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/shards.smk"


rule all:
    input:
        summary_outputs(),
        list(REPORT_FIGURES.values()),
    default_target: True
