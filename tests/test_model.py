import pytest
import torch

from fakescope.errors import FakescopeError, WeightsUnavailable
from fakescope.model.detector import Detector, build_backbone

from .conftest import MOBILENET_FILE


def test_paper_head_has_204801_parameters():
    m = Detector("resnet50", "flatten", 299, weights="none")
    assert m.feature_shape == (2048, 10, 10)
    assert m.head_parameters() == 204_801
    m.freeze(len(m._stages))  # whole backbone frozen: only the paper's Dense(1) trains
    assert m.trainable_parameters() == 204_801
    with torch.no_grad():
        assert m.eval()(torch.zeros(2, 3, 299, 299)).shape == (2, 1)


def test_gap_head_and_freezing_mobilenet():
    m = Detector("mobilenet_v2", "gap", 224, weights="none")
    assert m.head_parameters() == 1280 + 1
    total = m.trainable_parameters()
    m.freeze(3)
    frozen_some = m.trainable_parameters()
    m.freeze(4)
    assert total > frozen_some > m.trainable_parameters() > m.head_parameters()
    m.train()
    stem_bn = m._stages[0][0][1]
    assert not stem_bn.training  # frozen stages keep BatchNorm statistics fixed
    assert m.fc.training


def test_freeze_bn_keeps_statistics_but_trains_affine_weights():
    m = Detector("mobilenet_v2", "gap", 96, weights="none")
    m.freeze_bn = True
    m.train()
    bns = [x for x in m.features.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    m(torch.randn(4, 3, 96, 96) * 3 + 1).sum().backward()
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, bns, strict=True))
    assert all(b.weight.grad is not None and b.weight.requires_grad for b in bns)
    assert m.fc.training and not bns[0].training


def test_imagenet_weights_through_torchvision_cache():
    """torchvision's own loader finds the file in $TORCH_HOME (seeded by conftest)."""
    net = build_backbone("mobilenet_v2", "imagenet")
    ref = torch.load(MOBILENET_FILE, weights_only=True)
    assert torch.equal(net.features[0][0].weight, ref["features.0.0.weight"])


def test_weights_file_path_loads_the_same():
    net = build_backbone("mobilenet_v2", str(MOBILENET_FILE))
    ref = torch.load(MOBILENET_FILE, weights_only=True)
    assert torch.equal(net.features[18][0].weight, ref["features.18.0.weight"])


def test_missing_imagenet_weights_is_a_clear_error():
    with pytest.raises(WeightsUnavailable) as e:
        build_backbone("resnet18", "imagenet")  # not in the seeded cache, no internet
    msg = str(e.value)
    assert "--weights PATH" in msg and "--weights none" in msg and "resnet18" in msg


def test_wrong_weights_file_is_refused(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not fit resnet18"):
        build_backbone("resnet18", str(MOBILENET_FILE))
    with pytest.raises(WeightsUnavailable, match="no such file"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_unknown_backbone():
    with pytest.raises(FakescopeError, match="not supported"):
        Detector("vit_b_16", weights="none")


def test_inference_model_folds_batchnorm_and_keeps_scores():
    """Scoring uses a copy with BatchNorm folded into the convolutions; on real faces and the
    real ImageNet weights it must give the original's logits, and leave the original intact."""
    from fakescope.data.images import load_rgb
    from fakescope.data.transforms import to_tensor
    from fakescope.model.detector import inference_model

    from .conftest import sg_images

    m = Detector("mobilenet_v2", "gap", 299, weights=str(MOBILENET_FILE)).eval()
    x = torch.stack([to_tensor(load_rgb(p), 299) for p in sg_images("fake", n=2)])
    fast = inference_model(m)
    bn = torch.nn.BatchNorm2d
    assert not any(isinstance(q, bn) for q in fast.modules())
    assert sum(isinstance(q, bn) for q in m.modules()) == 52  # the original keeps all of them
    with torch.no_grad():
        want, got = m(x), fast(x)
    assert want.abs().max() > 0.01  # a real signal, not zeros
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    m.train()  # the original still trains: its BatchNorm layers follow train mode
    assert all(q.training for q in m.modules() if isinstance(q, bn))
