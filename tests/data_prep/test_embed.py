"""EMBED cohort builder on a phantom EMBED export: rows agree with the ground truth, screening views only,
women of three races, clinical rows joined by exam and side, the flow table adds up, bad inputs fail."""

import functools
from pathlib import Path

import pandas as pd
import pytest

from data_prep import embed
from data_prep.flow import flow_path
from medcf.phantoms import write_phantom_dataset
from medcf.phantoms.writer import TRUTH_FILE
from tests.data_prep.conftest import IDS, ModuleRun, copy_tables, dropped, run_builder

N, SIZE, SEED = (
    60,
    32,
    96,
)  # seed 96: C-view, spot-mag, XCCL, a male patient, unknown ethnicity, per-side rows
TABLE_IDS = {"empi_anon": str, "acc_anon": str}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mammo") / "export"
    return write_phantom_dataset("mammo", out, N, SIZE, SEED, workers=1, progress=False)


@pytest.fixture(scope="module")
def run(root, tmp_path_factory) -> ModuleRun:
    """The builder run once as ``python -m data_prep.embed`` on the phantom export."""
    out = tmp_path_factory.mktemp("cohort") / "mammo.csv"
    return run_builder("data_prep.embed", root, out)


@pytest.fixture(scope="module")
def cohort(run) -> pd.DataFrame:
    return pd.read_csv(run.out, dtype=IDS)


@pytest.fixture(scope="module")
def flow(run) -> pd.DataFrame:
    return pd.read_csv(flow_path(run.out))


@pytest.fixture(scope="module")
def tables(root) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(root / name, dtype=TABLE_IDS) for name in (*embed.TABLES, TRUTH_FILE)}


variant = functools.partial(copy_tables, tables=embed.TABLES)


def build(root: Path, out: Path, *options: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cohort and flow table of one successful ``main`` run."""
    assert embed.main(["--root", str(root), "--out", str(out), *options]) == 0
    return pd.read_csv(out, dtype=IDS), pd.read_csv(flow_path(out))


def bilateral_exam(tables: dict[str, pd.DataFrame], cohort: pd.DataFrame) -> str:
    """An exam with a single clinical row of side B and images of both sides in the cohort."""
    clinical = tables[embed.CLINICAL]
    rows = clinical.groupby("acc_anon")["side"].agg(list)
    single_b = rows[rows.map(lambda sides: sides == ["B"])].index
    both = cohort[cohort["study"].isin(single_b)].groupby("study")["laterality"].nunique()
    return str(both[both == 2].index[0])


class TestCommandLine:
    def test_module_run_writes_cohort_and_flow(self, run):
        """``python -m data_prep.embed`` exits 0, writes both CSVs, prints flow and summary."""
        assert run.returncode == 0, run.stderr
        assert run.out.is_file() and flow_path(run.out).name == "mammo_flow.csv"
        assert "spot/magnification view" in run.stdout and "cohort: " in run.stdout

    def test_columns(self, cohort):
        """One row per image with exactly the documented columns."""
        assert tuple(cohort.columns) == embed.COLUMNS
        assert cohort["path"].is_unique and len(cohort) > 0


class TestCohortRows:
    def test_every_file_exists(self, root, cohort):
        """Each anon_dicom_path is mapped under the root from its cohort_<n>/ part, to an existing file."""
        assert cohort["path"].str.startswith("cohort_1/").all()
        assert all((root / path).is_file() for path in cohort["path"])

    def test_attributes_agree_with_truth(self, cohort, tables):
        """race, density, view, laterality equal the truth; age equal up to the table's 0.1-year rounding."""
        truth = tables[TRUTH_FILE]
        rows = cohort.merge(truth, on="path", how="left", validate="one_to_one", suffixes=("", "_true"))
        assert rows["age_true"].notna().all()
        for column in ("race", "density", "view", "laterality"):
            assert (rows[column] == rows[f"{column}_true"]).all(), column
        assert (rows["age"] - rows["age_true"]).abs().max() <= 0.05 + 1e-9
        assert (rows["patient"] == rows["empi_anon"]).all() and (rows["study"] == rows["acc_anon"]).all()
        assert (rows["image_id"] + ".dcm" == rows["path"].str.rsplit("/", n=1).str[-1]).all()

    def test_screening_views_only(self, cohort, tables):
        """No C-view or spot-magnification images, although the export holds both; XCCL kept as CC."""
        truth = tables[TRUTH_FILE].set_index("path")
        assert (truth["final_image_type"] == "cview").any() and truth["spot_mag"].any()
        kept = truth.loc[cohort["path"]]
        assert (kept["final_image_type"] == "2D").all() and not kept["spot_mag"].any()
        xccl = kept["view_position"] == "XCCL"
        assert xccl.any() and (cohort.loc[xccl.to_numpy(), "view"] == "CC").all()

    def test_men_and_unknown_ethnicity_absent(self, cohort, tables):
        """Patients recorded as male (tissueden 5) or with unreported ethnicity are not in the cohort."""
        clinical = tables[embed.CLINICAL]
        male = clinical.loc[(clinical["GENDER_DESC"] == "Male") | (clinical["tissueden"] == 5), "empi_anon"]
        spelled = clinical["ETHNICITY_DESC"].str.split().str.join(" ")
        unknown = clinical.loc[~spelled.isin(embed.RACES), "empi_anon"]
        assert len(male) > 0 and len(unknown) > 0
        assert not cohort["patient"].isin(pd.concat([male, unknown])).any()

    def test_two_space_black_spelling(self, cohort, tables):
        """The export spells "African American  or Black" with two spaces; it maps to Black."""
        assert tables[embed.CLINICAL]["ETHNICITY_DESC"].str.contains("American  or").any()
        assert (cohort["race"] == "Black").any()


class TestFlowTable:
    def test_counts_chain_and_add_up(self, flow, cohort, tables):
        """rows_in of each filter is the previous rows_kept; drops plus the cohort give all metadata rows."""
        total = len(tables[embed.METADATA])
        assert (flow["rows_in"].iloc[1:].to_numpy() == flow["rows_kept"].iloc[:-1].to_numpy()).all()
        assert flow["rows_in"].iloc[0] == total and flow["rows_kept"].iloc[-1] == len(cohort)
        assert flow["rows_dropped"].sum() + len(cohort) == total

    def test_each_reason_with_such_rows_drops_them(self, flow, tables):
        """C-view, spot-mag, male and unknown-ethnicity rows are each dropped by their own filter."""
        metadata = tables[embed.METADATA]
        assert dropped(flow, "not a 2D image (C-view or other)") == (metadata["FinalImageType"] != "2D").sum()
        assert dropped(flow, "spot/magnification view") == (metadata["spot_mag"] == 1).sum()
        assert dropped(flow, "not female (GENDER_DESC)") > 0
        assert dropped(flow, "race not White/Asian/Black") > 0
        for reason in ("view not CC/MLO (XCCL counted as CC)", "no clinical row for the exam and side"):
            assert dropped(flow, reason) == 0, reason

    def test_tissueden_5_drops_men_without_gender_column(self, root, cohort, flow, tmp_path):
        """Without GENDER_DESC, tissueden 5 removes the same men: same cohort."""
        edit = {embed.CLINICAL: lambda t: t.drop(columns="GENDER_DESC")}
        other, other_flow = build(variant(root, tmp_path / "v", edit), tmp_path / "c.csv")
        assert other.equals(cohort)
        assert dropped(other_flow, "tissueden not 1-4 (5 = male)") == dropped(flow, "not female (GENDER_DESC)")


class TestClinicalJoin:
    def test_per_side_rows_join_by_side(self, root, cohort, tables, tmp_path):
        """An exam's L row gives its left images' density, its R row its right images'."""
        acc = bilateral_exam(tables, cohort)

        def per_side(clinical: pd.DataFrame) -> pd.DataFrame:
            row = clinical[clinical["acc_anon"] == acc]
            left, right = row.assign(side="L", tissueden="1"), row.assign(side="R", tissueden="4")
            return pd.concat([clinical[clinical["acc_anon"] != acc], left, right])

        edited, _ = build(variant(root, tmp_path / "v", {embed.CLINICAL: per_side}), tmp_path / "c.csv")
        exam = edited[edited["study"] == acc]
        assert len(exam) == (cohort["study"] == acc).sum()
        assert (exam["density"] == exam["laterality"].map({"L": "A", "R": "D"})).all()

    def test_contradictory_rows_are_dropped(self, root, cohort, tables, tmp_path):
        """A second row for the same exam and side with another tissueden drops that side's images only."""
        acc = bilateral_exam(tables, cohort)

        def contradict(clinical: pd.DataFrame) -> pd.DataFrame:
            row = clinical[clinical["acc_anon"] == acc]
            other = str(int(row["tissueden"].iloc[0]) % 4 + 1)
            return pd.concat([clinical, row.assign(side="L", tissueden=other)])

        edited, flow = build(variant(root, tmp_path / "v", {embed.CLINICAL: contradict}), tmp_path / "c.csv")
        before = cohort[cohort["study"] == acc]
        after = edited[edited["study"] == acc]
        left = (before["laterality"] == "L").sum()
        assert left > 0 and dropped(flow, "contradictory clinical rows for the exam and side") == left
        assert set(after["laterality"]) == {"R"} and len(after) == len(before) - left

    def test_duplicate_agreeing_rows_are_not_contradictory(self, root, cohort, tmp_path):
        """Repeated identical clinical rows (one per finding in EMBED) change nothing."""
        repeat = {embed.CLINICAL: lambda clinical: pd.concat([clinical, clinical])}
        edited, flow = build(variant(root, tmp_path / "v", repeat), tmp_path / "c.csv")
        assert edited.equals(cohort) and dropped(flow, "contradictory clinical rows for the exam and side") == 0

    def test_side_row_does_not_cover_the_other_side(self, root, cohort, tables, tmp_path):
        """An exam with only an R row: its left images have no clinical row and are dropped."""
        acc = bilateral_exam(tables, cohort)

        def right_only(clinical: pd.DataFrame) -> pd.DataFrame:
            return clinical.assign(side=clinical["side"].mask(clinical["acc_anon"] == acc, "R"))

        edited, flow = build(variant(root, tmp_path / "v", {embed.CLINICAL: right_only}), tmp_path / "c.csv")
        left = ((cohort["study"] == acc) & (cohort["laterality"] == "L")).sum()
        assert dropped(flow, "no clinical row for the exam and side") == left > 0
        assert set(edited.loc[edited["study"] == acc, "laterality"]) == {"R"}

    def test_single_space_black_spelling(self, root, cohort, tmp_path):
        """ "African American or Black" with one space gives the same cohort."""
        respell = {embed.CLINICAL: lambda t: t.replace("African American  or Black", "African American or Black")}
        edited, _ = build(variant(root, tmp_path / "v", respell), tmp_path / "c.csv")
        assert edited.equals(cohort)


class TestPaths:
    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ("/mnt/NAS2/mammo/anon_dicom/cohort_1/1/2/3.dcm", "cohort_1/1/2/3.dcm"),
            ("D:\\data\\cohort_2\\1\\2\\3.dcm", "cohort_2/1/2/3.dcm"),
            ("/x/cohort_1/cohort_2/3.dcm", "cohort_1/cohort_2/3.dcm"),
            ("images/1/3.dcm", "images/1/3.dcm"),
            ("/elsewhere/1/3.dcm", None),
            ("../outside/3.dcm", None),
            ("", None),
        ],
    )
    def test_resolve_path(self, source, expected, tmp_path):
        """The part from the first cohort_<n>/ on; else relative to the root; else unresolvable."""
        assert embed.resolve_path(source, tmp_path) == expected

    def test_absolute_path_under_root(self, tmp_path):
        """An absolute path inside the root (no cohort_<n>/ part) is taken relative to it."""
        assert embed.resolve_path(str(tmp_path.resolve() / "a" / "b.dcm"), tmp_path) == "a/b.dcm"

    def test_image_id_keeps_uid_dots(self):
        """The image id is the file name without .dcm, dots of the UID kept."""
        assert embed.image_id("cohort_1/1/2/1.2.840.113.dcm") == "1.2.840.113"

    def test_unresolvable_path_is_dropped(self, root, cohort, tmp_path):
        """A path outside any cohort_<n>/ folder and outside the root is dropped with its reason."""
        first = cohort["path"].iloc[0]

        def move(metadata: pd.DataFrame) -> pd.DataFrame:
            moved = metadata["anon_dicom_path"].str.endswith(first)
            return metadata.assign(anon_dicom_path=metadata["anon_dicom_path"].mask(moved, "/elsewhere/x.dcm"))

        edited, flow = build(variant(root, tmp_path / "v", {embed.METADATA: move}), tmp_path / "c.csv")
        assert dropped(flow, "DICOM path not resolvable under root") == 1 and len(edited) == len(cohort) - 1


class TestSplitAndInputs:
    def test_patients_never_span_splits(self, cohort):
        """Every image of a patient is in the same split."""
        assert (cohort.groupby("patient")["split"].nunique() == 1).all()
        assert set(cohort["split"]) <= {"train", "val", "test"}

    def test_gzipped_tables(self, root, cohort, tmp_path):
        """The same cohort from .csv.gz tables."""
        edited, _ = build(variant(root, tmp_path / "gz", gz=True), tmp_path / "c.csv")
        assert edited.equals(cohort)


class TestErrors:
    def error_line(self, capsys, status: int) -> str:
        lines = capsys.readouterr().err.strip().splitlines()
        assert status != 0 and len(lines) == 1 and lines[0].startswith("data_prep.embed: error: ")
        return lines[0]

    def test_missing_table(self, root, tmp_path, capsys):
        """A missing clinical table is named, with the list of expected tables."""
        copy = variant(root, tmp_path / "copy")
        (copy / embed.CLINICAL).unlink()
        status = embed.main(["--root", str(copy), "--out", str(tmp_path / "c.csv")])
        line = self.error_line(capsys, status)
        assert f"missing input table {embed.CLINICAL}" in line and embed.METADATA in line

    def test_missing_column(self, root, tmp_path, capsys):
        """A missing column is named with its table."""
        copy = variant(root, tmp_path / "copy", {embed.CLINICAL: lambda t: t.drop(columns="tissueden")})
        status = embed.main(["--root", str(copy), "--out", str(tmp_path / "c.csv")])
        assert f"{embed.CLINICAL}: missing column 'tissueden'" in self.error_line(capsys, status)

    def test_negative_split(self, root, tmp_path, capsys):
        """A negative fraction is refused, naming --split."""
        status = embed.main(["--root", str(root), "--out", str(tmp_path / "c.csv"), "--split", "1.1", "-0.1", "0"])
        assert "--split" in self.error_line(capsys, status)
