from wsss.report import summary_rows


def _eval(stage, split="train", miou=0.5, precision=0.6, recall=0.7, **extra):
    return {"variant": "baseline", "stage": stage, "split": split, "miou": miou,
            "fg_precision": precision, "fg_recall": recall, **extra}


def test_summary_rows_order_stages_and_leave_undefined_cells_empty():
    evals = [_eval("deeplab_psa", split="val", precision=None, miou=0.25),
             _eval("psa", miou=0.6123), _eval("crf"),
             _eval("seeds", best_threshold=0.14, miou_at_default=0.4)]
    columns, rows = summary_rows(evals)
    stages = [c[: -len("_miou")] for c in columns if c.endswith("_miou") and "default" not in c]
    assert stages == ["seeds", "crf", "psa", "deeplab_psa"]
    train, val = rows
    assert (train["split"], val["split"]) == ("train", "val")
    assert train["psa_miou"] == 61.23 and train["seeds_threshold"] == 0.14
    assert val["deeplab_psa_miou"] == 25.0 and val["deeplab_psa_fg_precision"] == ""
    assert "psa_miou" not in val
