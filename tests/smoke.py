"""The suite's smoke test, run in-process by tests/test_packaging.py and, as a script, against
an editable install and a built wheel: the public API imports lazily and scores a tiny model."""

from __future__ import annotations

import sys


def main() -> str:
    import infgate

    assert "torch" not in sys.modules, "import infgate must not load torch"
    assert set(infgate.__all__) >= {"ScanConfig", "run_scan", "scan_dataset", "find_label_errors"}
    import numpy as np
    import torch
    from infgate import ScanConfig, TrainingData, scan_dataset
    from infgate.examples.models import make_classifier, train_classifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    y[:6] = 1 - y[:6]  # planted flips
    model = make_classifier(4, 2, generator=torch.Generator().manual_seed(0))
    train_classifier(model, torch.as_tensor(x), torch.as_tensor(y))
    model.eval()
    config = ScanConfig().with_overrides(**{"report.log_to_mlflow": False, "detect.explain_top": 0})
    result = scan_dataset(model, TrainingData(x, y), config=config)
    top = set(result.ranking["example_id"].head(12).astype(str))
    assert len(top & {str(i) for i in range(6)}) >= 4, "the planted flips rank at the top"
    return str(infgate.__file__)


if __name__ == "__main__":
    print(main())
