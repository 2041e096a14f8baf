import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import apply_temperature, fit_temperature
from pneumolab.evaluation.metrics import (
    _weighted_metrics,
    bootstrap_weights,
    compute_metrics,
    consistency_bands,
    ece_if_calibrated,
    metrics_with_ci,
    net_benefit,
    promise_p_value,
    promised_rates,
)
from pneumolab.evaluation.thresholds import choose_threshold, effective_images, parse_policy, thin_validation


def test_metrics_match_hand_computed_values() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])
    m = compute_metrics(p, y, threshold=0.5)
    # At 0.5: TP=3 (0.9, 0.8, 0.6), FN=1 (0.3), FP=1 (0.7), TN=5.
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 5)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # AUROC: of 4x6 positive-negative pairs, only (0.6 vs 0.7), (0.3 vs 0.7), (0.3 vs 0.4) are misordered.
    assert m["auroc"] == pytest.approx(21 / 24)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # Net benefit at 0.5 (odds 1): 3/10 true positives less 1/10 false positive; flagging all: 4/10 - 6/10.
    assert m["net_benefit"] == pytest.approx(0.2) and m["net_benefit_treat_all"] == pytest.approx(-0.2)


def test_net_benefit_over_thresholds_matches_hand_computed_values() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])
    t = np.array([0.25, 0.5, 0.95])
    # t=0.25 (odds 1/3): TP 4, FP 2 (0.7, 0.4); t=0.95: nothing reaches it.
    np.testing.assert_allclose(net_benefit(p, y, t), [0.4 - 0.2 / 3, 0.2, 0.0])
    np.testing.assert_allclose(net_benefit(np.ones_like(p), y, t), [0.4 - 0.6 / 3, -0.2, 0.4 - 0.6 * 19])
    assert compute_metrics(p, y, threshold=0.25)["net_benefit"] == pytest.approx(0.4 - 0.2 / 3)


def test_rank_metrics_and_ece_agree_with_reference_implementations() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1), 2)  # many ties
    m = compute_metrics(p, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    ref = binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=15, norm="l1")
    assert m["ece"] == pytest.approx(float(ref), abs=1e-6)


def test_one_class_only_gives_nan_with_a_warning_not_a_crash() -> None:
    with pytest.warns(UserWarning, match="only one class"):
        m = compute_metrics(np.array([0.2, 0.9]), np.array([1, 1]))
    assert np.isnan(m["auroc"]) and np.isnan(m["specificity"]) and m["sensitivity"] == 0.5


def test_bad_inputs_raise() -> None:
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        compute_metrics(np.array([1.2]), np.array([1]))
    with pytest.raises(InputError, match="equal-length"):
        compute_metrics(np.array([0.1, 0.2]), np.array([1]))


def test_bootstrap_keeps_a_patients_images_together() -> None:
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    w = bootstrap_weights(groups, n_boot=500, seed=0)
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 3, 4]].sum(1) == 3).all()  # 3 patients drawn per resample


def test_ci_is_seeded_and_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1)
    groups = np.arange(200) // 4
    a = metrics_with_ci(p, y, groups, 0.5, n_boot=500, seed=3)
    b = metrics_with_ci(p, y, groups, 0.5, n_boot=500, seed=3)
    c = metrics_with_ci(p, y, groups, 0.5, n_boot=500, seed=4)
    assert a == b and a["auroc"] != c["auroc"]
    for name in ("auroc", "sensitivity", "specificity", "f1", "ece"):
        assert a[name]["ci_low"] <= a[name]["value"] <= a[name]["ci_high"], name
    assert a["n_patients"] == 50 and a["bootstrap"]["unit"] == "patient"


def test_ece_noise_floor_of_a_calibrated_model_matches_hand_computed_values() -> None:
    # four images at 0.5: K ~ Binomial(4, 1/2) of them positive, ECE = |0.5 - K/4|: 0.5 w.p. 2/16, 0.25 w.p. 8/16,
    # 0 w.p. 6/16 -> mean 3/16; P(ECE >= 0.5) = 2/16
    floor = ece_if_calibrated(np.full(4, 0.5), observed=0.5, n_sim=40_000)
    assert floor["mean"] == pytest.approx(3 / 16, abs=0.004) and floor["p_value"] == pytest.approx(2 / 16, abs=0.006)
    assert (floor["low"], floor["high"]) == (0.0, 0.5)
    # certain probabilities come true every time: no noise at all
    certain = ece_if_calibrated(np.array([0.0, 1.0, 1.0]), observed=0.0)
    assert certain == {"mean": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_consistency_bands_are_the_binomial_range_of_each_bin() -> None:
    # 40 images at 0.5 (bin 7 of 15) and 10 certain positives (bin 14): Binomial(40, 1/2) / 40 has its 2.5% and 97.5%
    # quantiles at 14/40 and 26/40; a certain bin cannot move
    band = consistency_bands(np.r_[np.full(40, 0.5), np.ones(10)], n_sim=20_000)
    assert band["confidence"].tolist() == [0.5, 1.0]
    assert band["low"][0] == pytest.approx(14 / 40, abs=0.026) and band["high"][0] == pytest.approx(26 / 40, abs=0.026)
    assert band["low"][1] == band["high"][1] == 1.0


def test_ece_interval_is_the_bootstrap_percentile_interval_reflected_about_the_estimate() -> None:
    # A calibrated toy: binned ECE is biased upward, a resample's more (its percentile interval lies above the estimate)
    rng = np.random.default_rng(1)
    p = rng.random(150)
    y = (rng.random(150) < p).astype(int)
    groups = np.arange(150)
    m = metrics_with_ci(p, y, groups, 0.5, n_boot=400, seed=2)
    boot = _weighted_metrics(p.astype(float), y, bootstrap_weights(groups, 400, 2), 0.5)["ece"]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    ece = m["ece"]["value"]
    assert lo > ece - 0.01  # the percentile interval barely reaches down to the estimate
    assert m["ece"]["ci_low"] == pytest.approx(max(2 * ece - hi, 0.0))
    assert m["ece"]["ci_high"] == pytest.approx(2 * ece - lo)
    assert m["ece_if_calibrated"]["low"] <= ece <= m["ece_if_calibrated"]["high"]  # calibrated: inside the floor


def test_threshold_policies() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = choose_threshold(p, y, "youden")
    # t=0.4: sens 1, spec 3/4 (J=.75); t=0.7: sens 3/4, spec 1 (J=.75): the tie goes to the higher threshold.
    assert youden["threshold"] == 0.7 and youden["specificity"] == 1.0
    sens = choose_threshold(p, y, "sensitivity>=0.95")
    assert sens["threshold"] == 0.4 and sens["sensitivity"] == 1.0
    spec = choose_threshold(p, y, "specificity>=0.75")
    assert spec["threshold"] == 0.4 and spec["specificity"] == 0.75
    assert choose_threshold(p, y, "fixed=0.5")["threshold"] == 0.5
    assert parse_policy("Sensitivity >= 0.9") == ("sensitivity", 0.9)
    with pytest.raises(InputError, match="not understood"):
        parse_policy("sensitivity>0.9")


def test_effective_images_count_what_copies_of_one_image_add() -> None:
    # 4 copies (view after view) of 4 pneumonia and 2 normal images; at t = 0.5 the pneumonia images have 4, 4, 3 and
    # 1 of 4 copies right: shares 1, 1, .75, .25, p = .75, variance over images (.0625 + .0625 + 0 + .25) / 4 =
    # .09375, so 4 x .75 x .25 / .09375 = 8 images' worth; the normals' copies all agree: 2 images, no more.
    y = np.array([1, 1, 1, 1, 0, 0] * 4)
    right = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1], [1, 1, 1, 0, 1, 1], [1, 1, 0, 0, 1, 1]])  # (views, N)
    prob = np.where(right.ravel() == 1, np.where(y == 1, 0.9, 0.1), np.where(y == 1, 0.1, 0.9))
    assert effective_images(prob, y, 0.5, views=4) == {"NORMAL": 2.0, "PNEUMONIA": 8.0}
    # without copies every image counts once, right or wrong
    assert effective_images(prob[:6], y[:6], 0.5) == {"NORMAL": 2.0, "PNEUMONIA": 4.0}
    # copies as unlike as separate images count as such, never more: shares 1 and .5 would give 2 x .75 x .25 /
    # .0625 = 6 from 2 images of 2 copies; capped at 4
    y2, p2 = np.array([1, 1, 0] * 2), np.array([0.9, 0.9, 0.1, 0.9, 0.1, 0.1])
    assert effective_images(p2, y2, 0.5, views=2) == {"NORMAL": 1.0, "PNEUMONIA": 4.0}


def test_a_promised_rate_is_tested_against_the_images_it_rests_on() -> None:
    op = {"sensitivity": 0.95, "specificity": 0.95, "images": {"NORMAL": 120, "PNEUMONIA": 100}}
    rates = promised_rates(op)
    assert rates["specificity"]["images"] == 120 and rates["sensitivity"]["images"] == 100
    assert rates["specificity"]["ci"] == pytest.approx([0.8952, 0.9769], abs=1e-4)  # Wilson, 114 of 120
    # 14 of 20 normals right against 114 of 120: one-sided Fisher p = 0.0022; 20 of 20 is never below
    assert promise_p_value(14, 20, rates["specificity"]) == pytest.approx(0.00216, abs=1e-5)
    assert promise_p_value(20, 20, rates["sensitivity"]) == pytest.approx(1.0)
    # views worth more than the images are what counts; a file without sizes: the rate as if exact (binomial)
    assert promised_rates({**op, "effective_images": {"NORMAL": 300.4}})["specificity"]["images"] == 300
    bare = promised_rates({"specificity": 0.95})
    assert bare == {"specificity": {"value": 0.95, "images": None, "ci": None}}
    assert promise_p_value(14, 20, bare["specificity"]) == pytest.approx(0.000329, abs=1e-6)


def test_temperature_scaling_lowers_ece_on_an_overconfident_toy() -> None:
    torch.manual_seed(0)
    n = 4000
    y = torch.randint(0, 2, (n,))
    x = (y.float() * 2 - 1) + torch.randn(n)  # class means -1/+1, unit variance: the true log-odds is 2x...
    logits = torch.stack([torch.zeros(n), 2 * x * 4], dim=1)  # ...made 4x overconfident
    t = fit_temperature(logits, y)
    assert 3.0 < t < 5.0
    before = compute_metrics(logits.softmax(1)[:, 1].double().numpy(), y.numpy())["ece"]
    after = compute_metrics(apply_temperature(logits, t).double().numpy(), y.numpy())["ece"]
    assert after < before / 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auc_before = compute_metrics(logits.softmax(1)[:, 1].double().numpy(), y.numpy())["auroc"]
        after_auc = compute_metrics(apply_temperature(logits, t).double().numpy(), y.numpy())["auroc"]
        assert after_auc == pytest.approx(auc_before, abs=1e-4)  # rankings kept (up to float32 saturation ties)


def test_threshold_search_matches_exact_brute_force_with_its_tie_rules() -> None:
    """sklearn's ROC under the search must pick what exact arithmetic over every observed score picks,
    ties included (Youden/sensitivity: the highest tied threshold; specificity: the lowest)."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        p = np.round(rng.random(n), 1)  # coarse scores: many ties
        cand = np.unique(p)
        n_pos, n_neg = int(y.sum()), int((1 - y).sum())
        sens = [Fraction(int(((p >= c) & (y == 1)).sum()), n_pos) for c in cand]
        spec = [Fraction(int(((p < c) & (y == 0)).sum()), n_neg) for c in cand]
        j = [a + b for a, b in zip(sens, spec, strict=True)]
        assert choose_threshold(p, y, "youden")["threshold"] == cand[max(i for i, v in enumerate(j) if v == max(j))]
        ok = [i for i, s in enumerate(sens) if s >= Fraction(9, 10)]
        assert choose_threshold(p, y, "sensitivity>=0.9")["threshold"] == cand[ok[-1]]
        ok = [i for i, s in enumerate(spec) if s >= Fraction(1, 2)]
        if ok:
            assert choose_threshold(p, y, "specificity>=0.5")["threshold"] == cand[ok[0]]


def test_thin_validation_names_each_short_class_and_only_those() -> None:
    assert thin_validation({"NORMAL": 135, "PNEUMONIA": 388}, "sensitivity>=0.95") is None
    assert thin_validation(None, "sensitivity>=0.95") is None  # a model file from before the counts
    why = thin_validation({"NORMAL": 40, "PNEUMONIA": 19}, "sensitivity>=0.95")
    assert why.startswith("validation holds 19 PNEUMONIA images; policy sensitivity>=0.95 needs at least 20 PNEUMONIA")
    why = thin_validation({"NORMAL": 30, "PNEUMONIA": 30}, "specificity>=0.98")
    assert why.startswith("validation holds 30 NORMAL images; policy specificity>=0.98 needs at least 50 NORMAL")
