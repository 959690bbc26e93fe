"""The classifier on header fixtures: no DICOM, no conversion.

Each fixture states what the headers of a real series say (values as measured on the vendors'
exports with pydicom and `dcm2niix -b o`), so a rule change that misnames one fails here first.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bidsapp.heuristic.classify import (
    Decision,
    accel_label,
    anat_suffix,
    classify,
    pe_label,
    task_label,
)
from bidsapp.heuristic.headers import Output, SeriesHeader
from bidsapp.heuristic.plan import Override, output_names, plan

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
ONE = (Output(""),)


def hdr(n: int, description: str, **kw: object) -> SeriesHeader:
    base: dict[str, object] = {
        "series_id": f"{n}-{description}",
        "number": n,
        "description": description,
        "protocol": description,
        "sop_class": "MR Image Storage",
        "dims": (64, 64, 30, 1),
        "files": 30,
        "volumes": 1,
        "outputs": ONE,
        "acquired": f"{100000 + n * 100}",
    }
    base.update(kw)
    return SeriesHeader(**base)  # type: ignore[arg-type]


def mprage(n: int = 2, desc: str = "t1_mprage_sag_p2", **kw: object) -> SeriesHeader:
    fields: dict[str, object] = {
        "image_type": ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
        "scanning_sequence": "GR\\IR",
        "sequence_name": "*tfl3d1_16ns",
        "acquisition_type": "3D",
        "tr": 2.3,
        "te": 0.00298,
        "ti": 0.9,
        "orientation": SAGITTAL,
    }
    fields.update(kw)
    return hdr(n, desc, **fields)


def bold(n: int, desc: str, pe: str = "j-", volumes: int = 200, **kw: object) -> SeriesHeader:
    fields: dict[str, object] = {
        "image_type": ("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"),
        "scanning_sequence": "EP",
        "sequence_name": "*epfid2d1_64",
        "acquisition_type": "2D",
        "tr": 2.0,
        "te": 0.03,
        "pe_direction": pe,
        "orientation": AXIAL,
        "volumes": volumes,
    }
    fields.update(kw)
    return hdr(n, desc, **fields)


def names(decisions: list[Decision], headers: list[SeriesHeader]) -> dict[int, object]:
    by_key = {h.key: h for h in headers}
    return {by_key[d.key].number: output_names(d, by_key[d.key]) or d.reason for d in decisions}


# -- single series ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "suffix"),
    [
        (mprage(), "T1w"),
        # GE BRAVO: IR-prepared fast SPGR
        (
            hdr(
                3,
                "Sag T1 BRAVO",
                scanning_sequence="GR",
                sequence_name="efgre3d",
                acquisition_type="3D",
                tr=0.0082,
                te=0.0032,
                ti=0.45,
                image_type=("ORIGINAL", "PRIMARY", "OTHER"),
            ),
            "T1w",
        ),
        # Philips 3D T1 TFE: no inversion time in the standard tags
        (
            hdr(
                4,
                "T1W_3D_TFE",
                scanning_sequence="GR",
                sequence_name="T1TFE",
                acquisition_type="3D",
                tr=0.0081,
                te=0.0037,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
            ),
            "T1w",
        ),
        (
            hdr(
                5,
                "t2_tirm_tra_dark-fluid",
                scanning_sequence="SE\\IR",
                tr=9.0,
                te=0.081,
                ti=2.5,
                image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
            ),
            "FLAIR",
        ),
        # GE CUBE FLAIR
        (
            hdr(
                6,
                "Sag CUBE FLAIR",
                scanning_sequence="SE\\IR",
                acquisition_type="3D",
                tr=6.0,
                te=0.13,
                ti=1.8,
                image_type=("ORIGINAL", "PRIMARY", "OTHER"),
            ),
            "FLAIR",
        ),
        (
            hdr(
                7,
                "t2_tse_tra",
                scanning_sequence="SE",
                tr=5.0,
                te=0.09,
                image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
            ),
            "T2w",
        ),
        (
            hdr(
                8,
                "pd_tse_tra",
                scanning_sequence="SE",
                tr=3.0,
                te=0.012,
                image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
            ),
            "PDw",
        ),
    ],
)
def test_anatomical_contrasts(header: SeriesHeader, suffix: str) -> None:
    decision = classify(header)
    assert (decision.datatype, decision.suffix) == ("anat", suffix)


def test_physics_overrules_a_misleading_name() -> None:
    # named "t2" but an inversion-recovery sequence with a short TI and TE: a T1w image
    assert anat_suffix(mprage(desc="t2_wrong_name")) == "T1w"


def test_swi_magnitude_and_phase_are_t2starw_parts_and_scanner_swi_is_skipped() -> None:
    swi = {"scanning_sequence": "GR", "sequence_name": "*swi3d1r", "acquisition_type": "3D",
           "tr": 0.028, "te": 0.02}  # fmt: skip
    mag = hdr(10, "Mag_Images", image_type=("ORIGINAL", "PRIMARY", "M", "SWI", "ND"), **swi)
    pha = hdr(11, "Pha_Images", image_type=("ORIGINAL", "PRIMARY", "P", "SWI", "ND"), **swi)
    mip = hdr(12, "mIP_Images(SW)", image_type=("DERIVED", "PRIMARY", "MNIP", "SWI"), **swi)
    proc = hdr(13, "SWI_Images", image_type=("DERIVED", "PRIMARY", "M", "SWI"), **swi)
    headers = [mag, pha, mip, proc]
    assert names(plan(headers), headers) == {
        10: ["anat/part-mag_T2starw"],
        11: ["anat/part-phase_T2starw"],
        12: "scanner-made minimum intensity projection (mIP)",
        13: "scanner-processed SWI image",
    }


def test_a_t2star_magnitude_without_phase_has_no_part_entity() -> None:
    gre = {"scanning_sequence": "GR", "sequence_variant": "SP", "acquisition_type": "2D",
           "tr": 0.6, "te": 0.018}  # fmt: skip
    mag = hdr(4, "T2*W_FFE tra", image_type=("ORIGINAL", "PRIMARY", "M", "FFE", "M"), **gre)
    decisions = plan([mag])
    assert anat_suffix(mag) == "T2starw"
    assert names(decisions, [mag]) == {4: ["anat/T2starw"]}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (hdr(1, "AAHead_Scout_32ch-head-coil"), "localizer"),
        (hdr(99, "PhoenixZIPReport", sop_class="Enhanced SR Storage", dims=(0, 0, 0, 7)),
         "non-image series (Siemens Phoenix protocol report)"),
        (hdr(50, "Screen Save", sop_class="Secondary Capture Image Storage"),
         "secondary capture (a screenshot, not an acquisition)"),
        (hdr(9, "t1_mprage_sag_p2", outputs=()), "dcm2niix writes no image for this series"),
        (mprage(12, "t1_mprage_sag_p2_MPR_tra", image_type=("DERIVED", "SECONDARY", "MPR")),
         "MPR reformat"),
        (hdr(11, "DWI_ADC", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
         "scanner-derived ADC map"),
        (hdr(14, "DWI_ColFA", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "FA")),
         "scanner-derived colour FA map"),
        (bold(15, "MoCoSeries", image_type=("DERIVED", "PRIMARY", "M", "ND", "MOCO")),
         "motion-corrected copy"),
    ],
)  # fmt: skip
def test_skipped_series_say_why(header: SeriesHeader, reason: str) -> None:
    decision = classify(header)
    assert decision.skipped and decision.reason == reason


def test_a_bold_task_named_fa_is_bold_not_an_fa_map() -> None:
    header = bold(7, "func-bold_task-fa_run-1", image_type=("ORIGINAL", "PRIMARY", "FMRI", "NONE"),
                  bidsguess=("dwi", "_FA"))  # fmt: skip
    decision = classify(header)
    assert decision.name() == "func/task-fa_bold"


@pytest.mark.parametrize(
    ("description", "task"),
    [
        ("ep2d_bold_resting_state", "rest"),
        ("rsfMRI_AP", "rest"),
        ("func-bold_task-nback_run-2", "nback"),
        ("ax_asc_35sl", "axasc35sl"),
        ("fMRI_MB_asc", "MBasc"),
        ("BOLD", "unknown"),
    ],
)
def test_task_label_from_the_description(description: str, task: str) -> None:
    assert task_label(bold(3, description)) == task


@pytest.mark.parametrize(
    ("pe", "orientation", "label"),
    [
        ("j", AXIAL, "PA"),
        ("j-", AXIAL, "AP"),
        ("i", AXIAL, "RL"),
        ("i-", AXIAL, "LR"),
        # sagittal slices: the image's first axis runs anterior → posterior
        ("i", SAGITTAL, "AP"),
        ("", AXIAL, ""),
    ],
)
def test_phase_encoding_label_follows_the_anatomy(pe: str, orientation: tuple, label: str) -> None:  # type: ignore[type-arg]
    assert pe_label(bold(3, "x", pe=pe, orientation=orientation)) == label


def test_acceleration_label() -> None:
    assert accel_label(bold(1, "x", parallel_factor=1.5)) == "R1p5"
    assert accel_label(bold(1, "x", parallel_factor=2.0, multiband_factor=2.0)) == "R2MB2"
    assert accel_label(bold(1, "x")) == ""


# -- the session -----------------------------------------------------------------------------


def dwi(n: int, desc: str, pe: str, r: float, mb: float = 0.0) -> SeriesHeader:
    return hdr(
        n,
        desc,
        image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        scanning_sequence="EP\\SE",
        sequence_name="epi2",
        tr=8.0,
        te=0.08,
        pe_direction=pe,
        orientation=AXIAL,
        volumes=7,
        bvalues=(0.0, 1000.0),
        parallel_factor=r,
        multiband_factor=mb,
    )


def test_dwi_runs_differing_in_acceleration_get_acq_and_keep_their_direction() -> None:
    headers = [dwi(1, "Ax DWI", "j", 2), dwi(2, "Ax DWI", "j", 3), dwi(3, "Ax DWI", "j-", 2, 2)]
    assert names(plan(headers), headers) == {
        1: ["dwi/acq-R2_dir-PA_dwi"],
        2: ["dwi/acq-R3_dir-PA_dwi"],
        3: ["dwi/acq-R2MB2_dir-AP_dwi"],
    }


def test_a_prescan_normalised_copy_of_a_kept_acquisition_is_skipped() -> None:
    # Siemens XA: one acquisition saved without and with prescan normalisation (ImageTypeText)
    orig = mprage(5, "T1_MPRAGE", image_type=("ORIGINAL", "PRIMARY", "M", "NONE"),
                  image_type_text=("ORIGINAL", "PRIMARY", "M", "DIS2D"),
                  acquired="120517.0425")  # fmt: skip
    norm = replace(orig, series_id="6-T1_MPRAGE", number=6,
                   image_type_text=("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"))  # fmt: skip
    headers = [orig, norm]
    assert names(plan(headers), headers) == {
        5: ["anat/T1w"],
        6: "prescan-normalised copy of series 5 (same acquisition)",
    }
    # an override brings the copy back: the two reconstructions are then told apart by rec-
    back = Override(number=6, bids="anat/T1w")
    assert names(plan(headers, [back]), headers) == {
        5: ["anat/rec-orig_T1w"],
        6: ["anat/rec-norm_T1w"],
    }


def test_a_normalised_series_without_its_original_is_kept() -> None:
    # classic Siemens: NORM in ImageType; here no unnormalised twin, or only one of another
    # acquisition (another time) or of another component (phase): nothing is skipped
    norm = mprage(6, "t1_mprage_sag_p2", acquired="101000")
    other_time = mprage(8, "t1_mprage_sag_p2_ND", acquired="103000",
                        image_type=("ORIGINAL", "PRIMARY", "M", "ND"))  # fmt: skip
    assert names(plan([norm]), [norm]) == {6: ["anat/T1w"]}
    headers = [norm, other_time]
    assert names(plan(headers), headers) == {6: ["anat/rec-norm_T1w"], 8: ["anat/rec-orig_T1w"]}
    swi = {"scanning_sequence": "GR", "sequence_name": "*swi3d1r", "acquisition_type": "3D",
           "tr": 0.028, "te": 0.02, "acquired": "104000"}  # fmt: skip
    mag = hdr(10, "Mag_Images", image_type=("ORIGINAL", "PRIMARY", "M", "SWI", "ND", "NORM"), **swi)
    pha = hdr(11, "Pha_Images", image_type=("ORIGINAL", "PRIMARY", "P", "SWI", "ND"), **swi)
    assert names(plan([mag, pha]), [mag, pha]) == {
        10: ["anat/part-mag_T2starw"],
        11: ["anat/part-phase_T2starw"],
    }


def test_repeats_become_runs_in_acquisition_order_never_dup() -> None:
    # series numbers out of acquisition order: the later acquisition is run-2
    first = mprage(9, "t1_mprage", acquired="101000")
    second = mprage(4, "t1_mprage", acquired="103000")
    headers = [first, second]
    assert names(plan(headers), headers) == {9: ["anat/run-1_T1w"], 4: ["anat/run-2_T1w"]}


def test_gre_field_maps_pair_magnitude_and_phase_and_number_repeats() -> None:
    fm = {"scanning_sequence": "GR", "sequence_name": "*fm2d2r", "tr": 0.6, "te": 0.01}
    two = (Output("e1", echo_number=1, echo_time=0.0049), Output("e2", echo_number=2,
           echo_time=0.0074))  # fmt: skip
    phase = (Output("e2_ph", ("ORIGINAL", "PRIMARY", "P"), 2, 0.0074),)
    headers = [
        hdr(3, "gre_field_mapping", image_type=("ORIGINAL", "PRIMARY", "M"), outputs=two, **fm),
        hdr(4, "gre_field_mapping", image_type=("ORIGINAL", "PRIMARY", "P"), outputs=phase, **fm),
        hdr(8, "gre_field_mapping", image_type=("ORIGINAL", "PRIMARY", "M"), outputs=two, **fm),
        hdr(9, "gre_field_mapping", image_type=("ORIGINAL", "PRIMARY", "P"), outputs=phase, **fm),
    ]
    assert names(plan(headers), headers) == {
        3: ["fmap/run-1_magnitude1", "fmap/run-1_magnitude2"],
        4: ["fmap/run-1_phasediff"],
        8: ["fmap/run-2_magnitude1", "fmap/run-2_magnitude2"],
        9: ["fmap/run-2_phasediff"],
    }


def test_bold_with_sbref_and_a_spin_echo_field_map_pair() -> None:
    se = {"scanning_sequence": "EP\\SE", "sequence_name": "epse2d1_86", "volumes": 3}
    headers = [
        bold(5, "SpinEchoFieldMap_AP", pe="j-", **se),
        bold(6, "SpinEchoFieldMap_PA", pe="j", **se),
        bold(7, "rfMRI_REST_AP_SBRef", volumes=1),
        bold(8, "rfMRI_REST_AP"),
        bold(9, "tfMRI_WM_AP_SBRef", volumes=1),
        bold(10, "tfMRI_WM_AP"),
    ]
    assert names(plan(headers), headers) == {
        5: ["fmap/dir-AP_epi"],
        6: ["fmap/dir-PA_epi"],
        7: ["func/task-rest_sbref"],
        8: ["func/task-rest_bold"],
        9: ["func/task-tfMRIWMAP_sbref"],
        10: ["func/task-tfMRIWMAP_bold"],
    }


def test_asl_needs_every_required_field_or_is_skipped_with_the_missing_ones() -> None:
    asl = hdr(25, "asl_2d_tra", image_type=("ORIGINAL", "PRIMARY", "ASL", "NONE"),
              scanning_sequence="EP", tr=4.8, te=0.011, volumes=3,
              asl=(("ArterialSpinLabelingType", '"PCASL"'), ("PostLabelingDelay", "1.8"),
                   ("LabelingDuration", "1.8")),
              asl_context=("m0scan", "label", "control"))  # fmt: skip
    [skipped] = plan([asl])
    assert skipped.reason == (
        "ASL without BackgroundSuppression in the headers: supply them in --overrides"
    )
    fix = Override(number=25, sidecar=(("BackgroundSuppression", False),))
    [converted] = plan([asl], [fix])
    assert converted.name() == "perf/asl"
    assert converted.aslcontext == ("m0scan", "label", "control")
    assert dict(converted.sidecar) == {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 1.8,
        "LabelingDuration": 1.8,
        "BackgroundSuppression": False,
        "M0Type": "Included",
        "TotalAcquiredPairs": 1,
        "RepetitionTimePreparation": 4.8,
    }
    [no_context] = plan([replace(asl, asl_context=())], [fix])
    assert no_context.reason.startswith("ASL without aslcontext (volume types)")


def test_overrides_skip_and_rename_by_number_or_description() -> None:
    headers = [mprage(2), bold(3, "ep2d_bold_pilot"), bold(4, "ep2d_bold_pilot")]
    rules = [
        Override(number=2, skip="not needed"),
        Override(description="EP2D_BOLD_*", bids="func/task-motor_bold"),
    ]
    assert names(plan(headers, rules), headers) == {
        2: "skipped by overrides: not needed",
        3: ["func/task-motor_run-1_bold"],
        4: ["func/task-motor_run-2_bold"],
    }


def test_multi_echo_and_complex_outputs_are_named_like_heudiconv_does() -> None:
    echoes = tuple(Output(f"e{n}", ("M",), n, 0.01 * n) for n in (1, 2, 3))
    header = bold(4, "ME_bold_rest", outputs=echoes)
    [d] = plan([header])
    assert output_names(d, header) == [f"func/task-rest_echo-{n}_bold" for n in (1, 2, 3)]
