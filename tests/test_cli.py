"""The medcf command line: the issue's commands, one-line errors with exit status 2, the demo."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medcf.jobs.cli import DEMO_MARKER, main


class TestPhantomCommand:
    @pytest.mark.parametrize(
        ("kind", "table"), [("cxr", "mimic-cxr-2.0.0-metadata.csv"), ("mammo", "EMBED_OpenData_metadata.csv")]
    )
    def test_console_script_writes_the_data_set(self, tmp_path, kind, table):
        """`medcf phantom KIND --n 16 --size 64 --seed 0 --out DIR` as a real subprocess."""
        out = tmp_path / "x"
        medcf = Path(sys.executable).with_name("medcf")
        result = subprocess.run(
            [
                str(medcf),
                "phantom",
                kind,
                "--n",
                "16",
                "--size",
                "64",
                "--seed",
                "0",
                "--out",
                str(out),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stdout
        truth = pd.read_csv(out / "phantom_truth.csv")
        assert len(list(out.rglob("*.dcm"))) == len(truth) >= len(pd.read_csv(out / table)) >= 16
        assert (out / "phantom.json").is_file()

    def test_set_intervenes_on_the_whole_data_set(self, tmp_path):
        """--set sex=F makes every subject female in the truth and in patients.csv."""
        assert (
            main(
                [
                    "phantom",
                    "cxr",
                    "--n",
                    "6",
                    "--size",
                    "32",
                    "--out",
                    str(tmp_path / "o"),
                    "--set",
                    "sex=F",
                    "--quiet",
                ]
            )
            == 0
        )
        assert set(pd.read_csv(tmp_path / "o" / "phantom_truth.csv")["sex"]) == {"F"}
        assert set(pd.read_csv(tmp_path / "o" / "patients.csv")["gender"]) == {"F"}

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            (["--n", "0"], "n: 0 must be a positive number"),
            (["--n", "-3"], "n: -3 must be a positive number"),
            (["--size", "100"], "size: 100 must be a multiple of 16"),
            (["--set", "colour=red"], "unknown attribute 'colour'; known: age, sex, race, disease"),
            (["--set", "sex=X"], "sex: unknown value 'X'; allowed: M, F"),
            (["--set", "age=120"], "age: 120 is outside the allowed range [18, 95]"),
            (["--set", "sex"], "malformed assignment 'sex'"),
        ],
    )
    def test_bad_input_is_one_line_exit_2_nothing_written(self, tmp_path, capsys, arguments, message):
        """Bad values fail with one clear stderr line, exit status 2, and no output folder."""
        out = tmp_path / "out"
        code = main(["phantom", "cxr", "--n", "4", "--size", "32", "--out", str(out), "--quiet", *arguments])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert err.count("\n") == 0 and err.startswith("medcf: error: ") and message in err
        assert not out.exists()
        assert list(tmp_path.iterdir()) == []

    def test_existing_non_empty_folder_is_refused(self, tmp_path, capsys):
        """An existing, non-empty --out is an error that leaves the folder as it was."""
        (tmp_path / "note.txt").write_text("x")
        assert main(["phantom", "mammo", "--n", "4", "--size", "32", "--out", str(tmp_path), "--quiet"]) == 2
        assert "exists and is not empty" in capsys.readouterr().err
        assert [p.name for p in tmp_path.iterdir()] == ["note.txt"]

    def test_bad_population_file_names_the_field(self, tmp_path, capsys):
        """--population with an unknown or out-of-range field is rejected by name."""
        population = tmp_path / "pop.json"
        population.write_text('{"marker_fraction": 3}')
        code = main(
            [
                "phantom",
                "mammo",
                "--n",
                "4",
                "--size",
                "32",
                "--out",
                str(tmp_path / "o"),
                "--population",
                str(population),
            ]
        )
        assert code == 2 and "marker_fraction" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


class TestDemo:
    def test_demo_writes_both_data_sets_and_previews_and_reruns_with_overwrite(self, tmp_path, capsys):
        """The main job: both phantom data sets and preview PNGs; a rerun needs --overwrite."""
        out = tmp_path / "demo"
        arguments = ["demo", "--out", str(out), "--n", "4", "--size", "32", "--quiet"]
        assert main(arguments) == 0
        for kind in ("cxr", "mammo"):
            assert (out / kind / "phantom_truth.csv").is_file()
            assert (out / f"{kind}_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert main(arguments) == 2
        assert main([*arguments, "--overwrite"]) == 0
        assert (out / DEMO_MARKER).is_file()

    def test_overwrite_refuses_a_folder_that_is_not_a_demo(self, tmp_path, capsys):
        """--overwrite never deletes a folder medcf did not write as a demo."""
        (tmp_path / "data.csv").write_text("important")
        assert main(["demo", "--out", str(tmp_path), "--overwrite", "--n", "4", "--size", "32"]) == 2
        assert (tmp_path / "data.csv").read_text() == "important"
