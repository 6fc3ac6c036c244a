"""SPM12's own numbers (tests/data/spm12_octave.npz, computed by SPM12's code under Octave) reproduced."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

import voxfit

from voxfit.cli import main
from voxfit.core.reml import ar_components, reml, whitening_matrix
from voxfit.design import cosine_drift, make_design
from voxfit.engine import fit_global_ar
from voxfit.exceptions import InputError
from voxfit.io.masking import spm_globals

REF = np.load(Path(__file__).parent / "data" / "spm12_octave.npz")
DRIFTS = [f"drift_{k}" for k in range(1, 10)]


def test_spm12_block_design_with_middle_slice_microtime_onset():
    """SPM12 defaults (T = 16, T0 = 8), TR 7 s, 42 s blocks: equal to SPM's matrix to rounding."""
    events = {"listening": {"onset": REF["block_onsets"], "duration": np.full(7, 42.0)}}
    d = make_design(events, 7.0, 84, microtime_resolution=16, microtime_onset=8, drift="none")
    assert d.names == ("listening", "constant")
    npt.assert_allclose(d.X, REF["block_X"], rtol=0, atol=1e-12)


def test_spm12_events_with_time_derivatives():
    """The derivative is orthogonalised against its HRF regressor after sampling, within the trial type."""
    events = {
        "a": {"onset": REF["event_onsets_a"], "duration": np.zeros(7)},
        "b": {"onset": REF["event_onsets_b"], "duration": np.zeros(8)},
    }
    d = make_design(events, 7.0, 84, hrf="spm+derivative", microtime_resolution=16, microtime_onset=8, drift="none")
    assert d.names == ("a", "a_derivative", "b", "b_derivative", "constant")
    npt.assert_allclose(d.X, REF["event_X"], rtol=0, atol=1e-12)


def test_spm12_dct_high_pass_basis():
    npt.assert_allclose(cosine_drift(84, 7.0, 128.0), REF["dct_X0"], rtol=0, atol=1e-13)


def _global_fit(Y=None):
    X = np.column_stack([REF["reml_X"], REF["dct_X0"]])
    return fit_global_ar(
        X, REF["reml_Y"] if Y is None else Y, {"c": [1.0] + [0.0] * 10}, names=["listening", "constant", *DRIFTS]
    )


def test_reml_matches_spm_reml():
    """SPM's AR(0.2) components and spm_reml's estimate (same iterations, same stopping point)."""
    res = _global_fit()
    assert res.n_pooled == REF["reml_pooled"].size
    npt.assert_allclose(res.hyperparameters, REF["reml_h"], rtol=1e-9)
    npt.assert_allclose(res.correlation, REF["reml_V"], rtol=0, atol=1e-12)
    npt.assert_allclose(res.threshold, REF["reml_UF"], rtol=1e-7)  # SPM inverts the F cdf by bisection to 1e-8


def test_global_ar1_fit_matches_spm():
    """Betas to rounding; residual variance and t within 1e-6: SPM divides by trRV = 72.9999978 (its W has
    entries below 1e-6 dropped, so W V W' is not exactly I), voxfit by the exact 73."""
    res = _global_fit()
    npt.assert_allclose(res.fit.betas[:2], REF["reml_betas"], rtol=1e-10, atol=1e-10)
    npt.assert_allclose(res.fit.residual_variance, REF["reml_ResMS"], rtol=1e-6)
    npt.assert_allclose(res.contrasts["c"].t, REF["reml_t"], rtol=1e-6, atol=1e-6)
    assert res.fit.dof == round(float(REF["reml_erdf"])) == 73


def test_reml_building_blocks():
    Q = ar_components(84, 0.2)
    assert np.count_nonzero(Q[0][0]) == 6 and abs(Q[0][0, 1]) < 1e-3  # powers of 0.2 down to 1e-4; lag 1 ~ 0
    X = np.column_stack([REF["reml_X"], REF["dct_X0"]])
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((84, 3000))
    V, h, iterations = reml(noise @ noise.T / 3000, X, Q)  # white noise: V close to I
    assert iterations <= 32 and abs(V[0, 1] / V[0, 0]) < 0.05
    W = whitening_matrix(V)
    npt.assert_allclose(W @ (V * 84 / np.trace(V)) @ W, np.eye(84), atol=1e-5)


def test_global_ar1_refuses_designs_and_data_without_effects():
    Y = REF["reml_Y"][:, 200:]  # no signal: nothing passes p < 0.001 (or one voxel by chance)
    rng = np.random.default_rng(1)
    with pytest.raises(InputError, match="no voxel passes SPM's effects-of-interest F test"):
        _global_fit(100 + rng.standard_normal((84, 50)))
    with pytest.raises(InputError, match="only constant and drift columns"):
        fit_global_ar(np.column_stack([np.ones(84), REF["dct_X0"]]), Y, {}, names=["constant", *DRIFTS])


def test_global_ar1_takes_rank_deficient_designs_and_refuses_empty_data():
    X = np.column_stack([REF["reml_X"][:, 0], REF["reml_X"], REF["dct_X0"]])  # 'listening' twice
    with pytest.warns(Warning, match="rank deficient"):
        res = fit_global_ar(
            X, REF["reml_Y"], {"c": [0.5, 0.5] + [0.0] * 10}, names=["l2", "listening", "constant", *DRIFTS]
        )
    npt.assert_allclose(res.contrasts["c"].t, _global_fit().contrasts["c"].t, rtol=1e-9)
    with pytest.raises(InputError, match="nothing to fit"):
        _global_fit(np.full((84, 5), np.nan))


MOD = np.load(Path(__file__).parent / "data" / "spm12_modulators.npz")


def _spm_name(name: str, hrf: str) -> str:
    """SPM's 'Axrt^1*bf(2)' as voxfit names it: 'Axrt^1_derivative' (FIR: 'Axrt^1_delay1')."""
    if name == "constant":
        return name
    base, b = re.fullmatch(r"(.*)\*bf\((\d+)\)", name).groups()
    return base + (f"_delay{int(b) - 1}" if hrf == "fir" else ["", "_derivative"][int(b) - 1])


@pytest.mark.parametrize("key,hrf", [("pm", "spm"), ("pm_deriv", "spm+derivative"), ("pm_fir", "fir")])
def test_spm12_parametric_modulators(key, hrf):
    """SPM12's spm_fMRI_design with two conditions: A modulated by rt (order 1) and difficulty (order 2), B by
    rt (order 1); zero durations, TR 2 s, 100 scans (tests/data/README.md)."""
    events = {
        "A": {
            "onset": MOD["pm_a_onsets"],
            "duration": np.zeros(10),
            "rt": MOD["pm_a_rt"],
            "difficulty": MOD["pm_a_difficulty"],
        },
        "B": {"onset": MOD["pm_b_onsets"], "duration": np.zeros(8), "rt": MOD["pm_b_rt"]},
    }
    d = make_design(events, 2.0, 100, hrf=hrf, fir_delays=4, modulators="rt:1,difficulty:2", drift="none")
    assert d.names == tuple(_spm_name(n, hrf) for n in MOD[f"{key}_names"])
    npt.assert_allclose(d.X, MOD[f"{key}_X"], rtol=0, atol=1e-12 * max(1.0, np.abs(MOD[f"{key}_X"]).max()))
    for name, kind in zip(d.names, d.kinds):
        assert kind == (
            "constant"
            if name == "constant"
            else "derivative"
            if name.endswith("_derivative")
            else "modulator"
            if "x" in name
            else "condition"
        )


def test_spm12_modulators_with_onsets_in_scans():
    """SPM's UNITS 'scans' (TR 2.5 s, 90 scans): A in 1.5-scan blocks with rt and difficulty (order 1), B events
    without modulators, HRF with time derivative."""
    events = {
        "A": {
            "onset": MOD["sc_a_onsets"],
            "duration": MOD["sc_a_durations"],
            "rt": MOD["sc_a_rt"],
            "difficulty": MOD["sc_a_difficulty"],
        },
        "B": {"onset": MOD["sc_b_onsets"], "duration": np.zeros(7)},
    }
    d = make_design(events, 2.5, 90, hrf="spm+derivative", modulators=["rt", "difficulty"], units="scans", drift="none")
    assert d.names == tuple(_spm_name(n, "spm") for n in MOD["sc_names"])
    npt.assert_allclose(d.X, MOD["sc_X"], rtol=0, atol=1e-12)


GLOBAL = np.load(Path(__file__).parent / "data" / "spm12_global_scaling.npz")


def _global_study(folder: Path) -> dict:
    """The reference's 24 scans as 3-D SPM2 Analyze files (the same int16 values and scale factors), its
    explicit mask (half of the brain) and its design (block, trend, constant)."""
    for s, (raw, slope, inter) in enumerate(zip(GLOBAL["raw"], GLOBAL["slopes"], GLOBAL["inters"])):
        hdr = nib.Spm2AnalyzeHeader()
        hdr.set_data_shape(raw.shape)
        hdr.set_data_dtype(np.int16)
        hdr.set_slope_inter(slope, inter)
        with open(folder / f"s{s:02d}.hdr", "wb") as f:
            hdr.write_to(f)
        (folder / f"s{s:02d}.img").write_bytes(raw.astype("<i2").tobytes(order="F"))
    mask = folder / "mask.nii"
    nib.save(nib.Nifti1Image(GLOBAL["mask"].astype(np.uint8), nib.load(folder / "s00.img").affine), mask)
    design = folder / "design.tsv"
    np.savetxt(design, GLOBAL["X"], fmt="%.17g", delimiter="\t", header="\t".join(GLOBAL["names"]), comments="")
    return {"scans": sorted(folder.glob("s*.img")), "pattern": folder / "s*.img", "mask": mask, "design": design}


def test_spm12_global_scaling_maps(tmp_path, capsys):
    """`--scaling global` is SPM12's session-specific grand mean scaling: spm_global of each whole scan (bright
    outliers and zeros outside the explicit mask included), data x 100 / their mean, OLS at the masked voxels
    (tests/data/README.md). The maps are float32: within 1e-6 of SPM's numbers, their float32 rounding included
    (measured 4.2e-7; voxfit fits int16 scans from a float32 copy)."""
    s = _global_study(tmp_path)
    argv = [
        "fit",
        s["pattern"],
        "--design",
        s["design"],
        "--mask",
        s["mask"],
        "--scaling",
        "global",
        "--contrast",
        "c=block + 0.5*trend",
        "-o",
        tmp_path / "res",
        "--quiet",
    ]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    mask = GLOBAL["mask"]
    assert np.array_equal(np.asanyarray(nib.load(tmp_path / "res" / "mask.nii.gz").dataobj) > 0, mask)
    maps = [f"regressor-{name}_stat-effect_statmap.nii.gz" for name in GLOBAL["names"]]
    for name, ref in zip([*maps, "contrast-c_stat-effect_statmap.nii.gz"], [*GLOBAL["betas"], GLOBAL["con"]]):
        values = nib.load(tmp_path / "res" / name).get_fdata(dtype=np.float64)
        assert np.isnan(values[~mask]).all()
        npt.assert_allclose(values[mask], ref[mask], rtol=1e-6, atol=0, err_msg=name)


def test_spm12_global_scaling_api(tmp_path):
    """The same fit through the API: float64 betas and contrast estimate within 1e-6 of SPM's (measured
    4.2e-7, from voxfit's float32 copy of the int16 scans) and spm_global's globals within 1e-8; globals of
    the masked voxels only would be 2.3% off."""
    s = _global_study(tmp_path)
    res = voxfit.fit_images(s["scans"], s["design"], {"c": "block + 0.5*trend"}, mask=s["mask"], scaling="global")
    mask = GLOBAL["mask"]
    assert np.array_equal(res.masker.mask.reshape(mask.shape, order="F"), mask)  # voxfit's voxels: Fortran order
    assert res.fit.betas.dtype == np.float64
    npt.assert_allclose(res.fit.betas, GLOBAL["betas"].reshape(3, -1, order="F")[:, res.masker.mask], rtol=1e-6)
    npt.assert_allclose(res.contrasts["c"].effect.ravel(), GLOBAL["con"].ravel(order="F")[res.masker.mask], rtol=1e-6)
    data = voxfit.load(s["scans"], s["mask"], scan_globals=True)
    npt.assert_allclose(data.globals, GLOBAL["globals"], rtol=1e-8)
    masked_only = spm_globals(np.asarray(data.data, dtype=np.float64))
    assert abs(np.mean(masked_only) / np.mean(GLOBAL["globals"]) - 1) > 0.02  # measured 2.3%
