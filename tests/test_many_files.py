"""Many files: which files a run reads and in what order (the same whatever order the file
system lists them in), the separator between documents, what is left out and what is refused,
and what the checkpoint records of them."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn import corpus as corpus_module
from charrnn.checkpoint import load_checkpoint
from charrnn.config import DOC_SEP, TrainConfig
from charrnn.cli import app
from charrnn.corpus import list_files, model_text, read_corpus
from charrnn.errors import CharrnnError, one_line
from charrnn.train import Trainer, same_run_on_every_rank
from test_hostile import main_exits
from test_train import TEXT, config


@pytest.fixture
def tree(tmp_path):
    """b.txt, notes/ (nested, with hidden, binary and empty files) and a.txt."""
    files = {"b.txt": "bee\n", "a.txt": "ay\n", "notes/z.txt": "zed\n", "notes/a b.txt": "space\n",
             "notes/sub/x.md": "ex\n", "notes/sub/deeper/y.txt": "why\n", "notes/B.txt": "upper\n",
             "notes/.hidden.txt": "no\n", "notes/.git/config": "no\n", "notes/empty.txt": ""}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (tmp_path / "notes" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    os.mkfifo(tmp_path / "notes" / "pipe")  # reading it would block
    return tmp_path


ORDER = ["b.txt", "notes/B.txt", "notes/a b.txt", "notes/sub/deeper/y.txt", "notes/sub/x.md", "notes/z.txt",
         "a.txt"]


def test_a_file_met_again_by_a_hard_link_is_read_once(tree):
    # a hard link (a backup tree of links, say) was read a second time: its text in the training
    # part twice, and perhaps in the validation and test parts too
    os.link(tree / "a.txt", tree / "notes" / "a copy.txt")
    files, notes = list_files([tree / "a.txt", tree / "notes"])
    assert tree / "notes" / "a copy.txt" not in files and files[0] == tree / "a.txt"
    assert f"read once each: {tree / 'notes' / 'a copy.txt'} (met twice)" in notes


def test_files_come_in_the_order_given_and_folders_sorted_by_path(tree, monkeypatch):
    inputs = [tree / "b.txt", tree / "notes", tree / "a.txt", tree / "notes" / "z.txt"]  # z.txt a second time
    files, notes = list_files(inputs)
    # empty.txt and logo.png are listed too: read_corpus decides what is text
    assert [p.relative_to(tree).as_posix() for p in files] == \
        ORDER[:3] + ["notes/empty.txt", "notes/logo.png"] + ORDER[3:]
    assert any("2 hidden" in n for n in notes) and any("1 entry inside the folders that is not a regular file" in n for n in notes)
    assert any("read once each" in n and "z.txt" in n for n in notes)

    walk = os.walk

    def backwards(top, *a, **kw):  # a file system that lists every folder in the opposite order
        for folder, dirs, names in walk(top, *a, **kw):
            dirs.reverse()
            names.reverse()
            yield folder, dirs, names

    monkeypatch.setattr(corpus_module.os, "walk", backwards)
    again, _ = list_files(inputs)
    assert again == files


def test_the_text_joins_the_documents_with_the_separator_and_leaves_out_what_is_not_text(tree):
    corpus = read_corpus([tree / "b.txt", tree / "notes", tree / "a.txt"], doc_sep=DOC_SEP)
    texts = [(tree / name).read_text() for name in ORDER]
    assert corpus.text == DOC_SEP.join(texts)
    assert [f["path"] for f in corpus.files] == [str((tree / name).resolve()) for name in ORDER]
    assert corpus.files[0] == {"path": str(tree / "b.txt"), "chars": 4,
                               "sha256": hashlib.sha256(b"bee\n").hexdigest()}
    assert any("left out 2 files that are empty, binary or not UTF-8" in n and "logo.png" in n
               for n in corpus.notes)
    assert read_corpus([tree / "a.txt"]).text == "ay\n"  # one document: nothing added
    assert read_corpus([tree / "b.txt", tree / "a.txt"], doc_sep="\n\n").text == "bee\n\n\nay\n"


@pytest.mark.parametrize("encoding", ["utf-8", "bytes"])
def test_files_that_hold_the_separator_themselves_are_noted(tmp_path, encoding):
    # a run on them trained in silence: the model learns that the separator does not always end a
    # document, and a sample stopped at it (--stop-at) can stop inside one
    def note(texts, doc_sep=DOC_SEP):
        paths = []
        for i, text in enumerate(texts):
            paths.append(tmp_path / f"{i}.txt")
            paths[-1].write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        corpus = read_corpus(paths, encoding, model_text(doc_sep, encoding, "--doc-sep"))
        said = [n for n in corpus.notes if "--doc-sep" in n]
        return said[0] if said else None

    assert note(["one\x03two é\n", "three\n", "\x03four\x03\n"]) == (
        "the files hold --doc-sep '\\x03' themselves, at 3 places, so it does not only end a document: sample "
        "--stop-at '\\x03' may stop inside one; give --doc-sep a text none of them holds")
    assert "--doc-sep '\\n\\n' themselves, at 1 place," in note(["para one\n\npara two\n", "b\n"], "\n\n")
    assert "--doc-sep '¶\\n' themselves, at 1 place," in note(["a¶\nb¶\n", "c\n", "¶"], "¶\n")  # not b's
    # where a document ends in the separator's characters, a sample stopped there loses only those
    assert note(["bee\n", "ay\n"], "\n\n") is None
    assert note(["para one\nmore\n\n\n", "b\n"], "\n\n") is None
    assert note(["one\x03", "two\n"]) is None
    assert note(["one\x03two\n"]) is None  # a single document: no separator
    assert note(["one\n", "two\n"]) is None
    if encoding == "bytes":  # a byte that is no UTF-8, as typed (it was shown as U+FFFD)
        assert "--doc-sep '\\xff' themselves, at 1 place," in note([b"a\xffb", b"c"], "\udcff")


def test_the_separators_inside_documents_are_counted_a_piece_at_a_time(monkeypatch):
    # every place the separator begins wholly inside a document, but for its last run of the
    # separator's characters: against a count by hand, in pieces of every few characters
    import random

    rng = random.Random(7)
    chars = ["\n", "\x03", "a", "b"]
    for doc_sep in ("\x03", "\n\n", "a\n", "\n\x03\n"):
        for _ in range(60):
            docs = ["".join(rng.choice("\n\x03ab") for _ in range(rng.randrange(0, 12)))
                    for _ in range(rng.randrange(2, 5))]
            text = doc_sep.join(docs)
            ids = np.array([chars.index(c) for c in text], np.uint8)
            spans, at = [], 0
            for doc in docs:
                spans.append((at, at + len(doc)))
                at += len(doc) + len(doc_sep)
            by_hand = 0
            for doc in docs:
                body = doc.rstrip(doc_sep)  # (str.rstrip takes a set of characters)
                by_hand += sum(body.startswith(doc_sep, p) for p in range(len(body)))
            for piece in (1, 2, 3, 5, 1 << 22):
                monkeypatch.setattr(corpus_module, "CHUNK_BYTES", piece)
                assert corpus_module._separators_inside(ids, chars, doc_sep, spans) == by_hand, (docs, doc_sep)


def test_links_to_folders_are_counted_not_followed_and_files_behind_links_are_read(tree, tmp_path):
    # a link to a folder was left out without a word
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.txt").write_text("far\n", encoding="utf-8")
    os.symlink(tmp_path / "elsewhere", tree / "notes" / "linked")
    os.symlink("..", tree / "notes" / "sub" / "up")  # followed, it would read notes/ again, and again
    os.symlink(tmp_path / "elsewhere" / "far.txt", tree / "notes" / "far-link.txt")
    files, notes = list_files([tree / "notes"])
    assert [p.relative_to(tree).as_posix() for p in files if p.suffix == ".txt"] == \
        ["notes/B.txt", "notes/a b.txt", "notes/empty.txt", "notes/far-link.txt", "notes/sub/deeper/y.txt",
         "notes/z.txt"]
    assert "left out 2 links to folders inside the folders (name a folder to read it)" in notes
    assert [p.name for p in list_files([tree / "notes" / "linked"])[0]] == ["far.txt"]  # named: read
    os.symlink(tmp_path / "elsewhere", tree / "notes" / ".hidden-link")  # hidden: counted as such
    assert "left out 3 hidden files and folders inside the folders (names starting with '.')" in \
        list_files([tree / "notes"])[1]


@pytest.mark.parametrize("encoding, unit", [("utf-8", "characters"), ("bytes", "bytes")])
def test_a_text_too_short_to_split_is_named_by_its_path_and_counted_in_the_models_units(tmp_path, monkeypatch,
                                                                                        capsys, encoding, unit):
    # "x.txt has 6 characters": which of the folders' x.txt, and a bytes model's are bytes
    for folder in ("a", "b"):
        (tmp_path / "t" / folder).mkdir(parents=True)
    (tmp_path / "t" / "b" / "x.txt").write_text("hello\n", encoding="utf-8")
    code, err = main_exits(monkeypatch, capsys, "train", tmp_path / "t", "--encoding", encoding, "--hidden", "4",
                           "--out-dir", tmp_path / "runs", "-q")
    assert code == 1 and one_line(err).startswith(f"error: {tmp_path / 't' / 'b' / 'x.txt'} has 6 {unit}; "), err


def test_a_folder_with_no_file_to_read_is_noted(tree):
    # beside other inputs it was taken without a word (alone, the run stops: no text files)
    (tree / "empty" / "sub").mkdir(parents=True)
    (tree / "only-hidden").mkdir()
    (tree / "only-hidden" / ".x.txt").write_text("x", encoding="utf-8")
    files, notes = list_files([tree / "a.txt", tree / "empty", tree / "only-hidden"])
    assert files == [tree / "a.txt"]
    assert f"no files to read in {tree / 'empty'}, {tree / 'only-hidden'}" in notes


def test_a_folder_that_cannot_be_listed_is_left_out_with_a_note(tree, monkeypatch):
    # it was left out without a word (os.walk skips what it cannot list); an error would leave no
    # way to train on a disk whose lost+found only root may read
    walk = os.walk

    def denied(top, onerror=None, **kw):  # as for a folder without read permission, which root ignores
        for entry in walk(top, onerror=onerror, **kw):
            if entry[0].endswith("sub"):  # as os.walk meets it: neither it nor what is below it listed
                onerror(PermissionError(13, "Permission denied", entry[0]))
                entry[1].clear()
                continue
            yield entry

    monkeypatch.setattr(corpus_module.os, "walk", denied)
    files, notes = list_files([tree / "notes"])
    assert [p.relative_to(tree).as_posix() for p in files if "sub" in p.parts] == []
    assert f"left out 1 folder that cannot be read: {tree / 'notes' / 'sub'} (Permission denied; check the " \
           "permissions of the path)" in notes
    with pytest.raises(CharrnnError) as e:  # the folder given itself: as a file given that cannot be read
        list_files([tree / "notes" / "sub"])
    assert str(e.value) == f"cannot read {tree / 'notes' / 'sub'}: Permission denied; check the permissions of the path"


def test_a_file_that_cannot_be_read_inside_a_folder_is_left_out_with_a_note(tree, monkeypatch):
    # it stopped the run ("cannot read ...: permission denied"), where a folder inside that
    # cannot be listed, or a binary file, is left out with a note
    locked = tree / "notes" / "sub" / "locked.txt"
    locked.write_text("secret\n", encoding="utf-8")

    def denied(path, *args, **kw):  # as for a file without read permission, which root ignores
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kw)

    monkeypatch.setattr(corpus_module, "open", denied, raising=False)
    corpus = read_corpus([tree / "notes"])
    locked.unlink()
    without = read_corpus([tree / "notes"])  # the text as if the file were not there, bit for bit
    assert corpus.files == without.files and corpus.sha256 == without.sha256 and (corpus.ids == without.ids).all()
    assert f"left out 1 file that cannot be read: {locked} (Permission denied; check the permissions of the " \
           "path)" in corpus.notes, corpus.notes
    locked.write_text("secret\n", encoding="utf-8")
    with pytest.raises(CharrnnError, match=re.escape(f"cannot read {locked}: permission denied")):
        read_corpus([tree / "a.txt", locked])  # named: an error, as ever


def test_a_folder_of_text_in_another_encoding_is_told_how_to_read_it(tmp_path):
    # a folder of Latin-1 lyrics: "no text files in lat (...); give files or folders that hold
    # text", where a file named alone was told to pass --encoding latin-1
    (tmp_path / "lat").mkdir()
    (tmp_path / "lat" / "s1.txt").write_bytes(b"caf\xe9 na\xefve song\n")
    (tmp_path / "lat" / "s2.txt").write_bytes(b"ni\xf1o \x93quoted\x94\n")
    fix = "re-save them as UTF-8, or pass --encoding latin-1 (any byte file)"
    with pytest.raises(CharrnnError, match=re.escape(f"; they are not UTF-8: {fix} or --encoding bytes") + "$"):
        read_corpus([tmp_path / "lat"])
    with pytest.raises(CharrnnError, match=re.escape(f"; they are not UTF-8: {fix}") + "$"):
        read_corpus([tmp_path / "lat"], model="utf-8")  # a model of characters reads no bytes
    (tmp_path / "lat" / "empty.txt").write_bytes(b"")
    with pytest.raises(CharrnnError, match=re.escape(f"; {tmp_path / 'lat' / 's1.txt'}, {tmp_path / 'lat' / 's2.txt'} "
                                                     f"are not UTF-8: {fix} or --encoding bytes") + "$"):
        read_corpus([tmp_path / "lat"])
    assert read_corpus([tmp_path / "lat"], encoding="latin-1").text.startswith("caf\xe9")  # as advised
    (tmp_path / "lat" / "s1.txt").unlink()
    (tmp_path / "lat" / "s2.txt").unlink()
    with pytest.raises(CharrnnError, match="; give files or folders that hold text$"):
        read_corpus([tmp_path / "lat"])


def test_overlapping_folders_count_what_they_leave_out_once(tmp_path):
    # `train lk/y lk`: "left out 2 hidden files and folders" and "2 links to folders" of one each
    top = tmp_path / "lk"
    (top / "y").mkdir(parents=True)
    (top / "y" / "t.txt").write_text(TEXT, encoding="utf-8")
    (top / "y" / ".h").write_text("x")
    (top / "y" / "up").symlink_to("..")
    os.mkfifo(top / "y" / "pipe")
    (top / "y" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    files, notes = list_files([top / "y", top])
    assert files == [top / "y" / "t.txt"]
    assert "left out 1 hidden file or folder inside the folders (names starting with '.')" in notes, notes
    assert "left out 1 link to a folder inside the folders (name a folder to read it)" in notes, notes
    assert "left out 1 entry inside the folders that is not a regular file" in notes, notes
    assert f"left out 1 log of charrnn runs inside the folders: {top / 'y' / 'metrics.jsonl'}" in notes, notes


@pytest.mark.parametrize("inputs", [["loop"], ["a.txt", "loop"], ["notes"]])
def test_a_link_that_loops_is_one_line(tree, inputs):
    # Path.resolve raised RuntimeError on it: an internal error
    os.symlink("loop", tree / "loop")
    os.symlink("../loop", tree / "notes" / "loop")  # inside a folder: not a regular file, left out
    if inputs == ["notes"]:
        assert "left out 2 entries inside the folders that are not regular files" in read_corpus([tree / "notes"]).notes
        return
    with pytest.raises(CharrnnError, match=f"^cannot read {tree / 'loop'}: Too many levels of symbolic links"):
        read_corpus([tree / name for name in inputs])


def test_the_ranks_settings_check_takes_a_link_that_loops(tree):
    # the ranks' settings, compared before the text is read (same_run_on_every_rank), resolved the
    # corpus's names with Path.resolve, which raised RuntimeError on a loop: an internal error,
    # where reading the text then says it in one line (above)
    os.symlink("loop", tree / "loop")
    same_run_on_every_rank(TrainConfig(corpus=[str(tree / "loop")]))  # one process: nothing to refuse


def test_a_folder_given_twice_is_read_and_counted_once(tree):
    # `train notes notes` said "left out 4 hidden ...", twice the 2 there are
    once, twice = list_files([tree / "notes"]), list_files([tree / "notes", tree / "notes"])
    assert twice[0] == once[0]
    assert [n for n in twice[1] if not n.startswith("read once each")] == once[1]
    assert f"read once each: {tree / 'notes'} (met twice)" in twice[1]


def test_the_logs_of_runs_inside_a_folder_are_left_out(tree):
    # `train .` twice: the second run learned the first run's metrics.jsonl and samples.txt
    run_dir = tree / "notes" / "checkpoints" / "x1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 10}\n')
    (run_dir / "samples.txt").write_text("--- step 10, epoch 0.10, val loss 2.0, temperature 0.8, seed 10 ---\n"
                                         "ROMEO:\n")
    (run_dir / "mine.txt").write_text("my own text\n")  # beside them: read
    other = tree / "notes" / "other"  # another tool's log of that name, and its notes: read
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    corpus = read_corpus([tree / "notes"], doc_sep="")
    assert '"kind"' not in corpus.text and "ROMEO" not in corpus.text
    assert "my own text" in corpus.text and '"acc": 0.5' in corpus.text
    assert f"left out 2 logs of charrnn runs inside the folders: {run_dir / 'metrics.jsonl'}, " \
           f"{run_dir / 'samples.txt'}" in corpus.notes


@pytest.mark.parametrize("encoding", ["latin-1", "bytes"])
def test_a_binary_file_inside_a_folder_is_left_out_in_every_encoding(tree, encoding):
    # encodings that read any byte read logo.png into the text, while the note said it was left out
    corpus = read_corpus([tree / "notes"], encoding, doc_sep="")
    assert [f["path"] for f in corpus.files] == [str((tree / n).resolve()) for n in ORDER[1:-1]]
    assert "\x00" not in corpus.text and "PNG" not in corpus.text
    assert any(n.startswith("left out 2 files that are empty or binary (name a file to read its bytes): ")
               and "logo.png" in n for n in corpus.notes)
    # a file named on the command line is read as that encoding reads it: every byte a character
    assert read_corpus([tree / "notes" / "logo.png"], encoding).text == "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def test_a_file_named_on_the_command_line_must_be_text(tree):
    with pytest.raises(CharrnnError, match=r"logo.png looks like a binary file"):
        read_corpus([tree / "a.txt", tree / "notes" / "logo.png"])
    with pytest.raises(CharrnnError, match=r"empty.txt is empty"):
        read_corpus([tree / "notes" / "empty.txt"])
    with pytest.raises(CharrnnError, match=r"missing.txt does not exist"):
        read_corpus([tree / "a.txt", tree / "missing.txt"])
    (tree / "only").mkdir()
    (tree / "only" / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(CharrnnError, match=r"no text files in .*only \(left out 1 file"):
        read_corpus([tree / "only"])


ASCII = "plain ASCII text, as Notepad's 'Unicode' saves it\n" * 20
HANZI = "天地玄黄宇宙洪荒" * 40
RUSSIAN = "Мороз и солнце; день чудесный!\n" * 20


# with a byte-order mark (utf-16, utf-32), any text; without one, text with a NUL in its first
# bytes: any in UTF-32, one with an ASCII character in UTF-16 (Russian was "a binary file")
@pytest.mark.parametrize("codec, said, text", [
    ("utf-16", "UTF-16", ASCII), ("utf-16", "UTF-16", HANZI), ("utf-32", "UTF-32", ASCII), ("utf-32", "UTF-32", HANZI),
    ("utf-16-le", "UTF-16LE", ASCII), ("utf-16-be", "UTF-16BE", ASCII), ("utf-16-le", "UTF-16LE", RUSSIAN),
    ("utf-16-be", "UTF-16BE", RUSSIAN), ("utf-32-le", "UTF-32LE", HANZI), ("utf-32-be", "UTF-32BE", RUSSIAN)])
def test_utf16_and_utf32_text_is_named_with_the_way_to_utf8(tmp_path, codec, said, text):
    # "looks like a binary file (NUL byte at offset 3); pass a text file, or --encoding bytes",
    # and with --encoding bytes the model learnt byte pairs and byte-order marks, not text
    path = tmp_path / "my notes.txt"
    path.write_bytes(text.encode(codec))
    with pytest.raises(CharrnnError) as refused:
        read_corpus([path])
    assert str(refused.value) == (f"{path} is {said} text, not UTF-8; save it as UTF-8 first, e.g. iconv -f {said} -t "
                                  f"UTF-8 '{path}' > '{tmp_path / 'my notes-utf8.txt'}'")
    if shutil.which("iconv"):  # the command it gives makes the file charrnn reads
        command = str(refused.value).split("e.g. ")[1]
        subprocess.run(command, shell=True, check=True, cwd=tmp_path)
        assert read_corpus([tmp_path / "my notes-utf8.txt"]).text == text
    (tmp_path / "folder").mkdir()
    os.replace(path, tmp_path / "folder" / "wide.txt")
    (tmp_path / "folder" / "plain.txt").write_text(TEXT, encoding="utf-8")
    corpus = read_corpus([tmp_path / "folder"])
    wide = tmp_path / "folder" / "wide.txt"  # the note said no more than "save it as UTF-8"
    assert corpus.text == TEXT and corpus.notes == [
        f"left out 1 file of UTF-16 or UTF-32 text: {wide}; save it as UTF-8 to read it, e.g. iconv -f {said} -t "
        f"UTF-8 {wide} > {wide.with_name('wide-utf8.txt')}"]


@pytest.mark.parametrize("mark, shown", [(b"\xff\xfe", "ÿþ"), (b"\xfe\xff", "þÿ")])
@pytest.mark.parametrize("line", ["café au lait, crème brûlée\n", "plain ASCII, line after line\n"])
def test_latin1_text_that_begins_with_the_bytes_of_a_utf16_mark_is_no_utf16(tmp_path, mark, shown, line):
    # "is UTF-16 text", with an iconv command that made Chinese of it and no word of --encoding
    path = tmp_path / "menu.txt"
    text = shown + line * 20
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CharrnnError, match=re.escape(f"{path} is not valid UTF-8: invalid start byte at byte offset 0 "
                                                     f"(line 1), byte 0x{mark[0]:02X}; re-save it as UTF-8, or pass "
                                                     "--encoding latin-1")):
        read_corpus([path])
    assert read_corpus([path], "latin-1").text == text  # as the line says
    (tmp_path / "notes.txt").write_text(TEXT, encoding="utf-8")
    corpus = read_corpus([tmp_path])
    assert corpus.text == TEXT and corpus.notes == [f"left out 1 file that is empty, binary or not UTF-8: {path}"]


@pytest.mark.parametrize("data", [b"abc\x00def\n" * 400, b"Hello world\x00" * 300, b"id\x00Tom\x00Ann\n" * 300])
def test_utf8_text_with_nuls_among_it_is_a_binary_file_not_utf16(tmp_path, data):
    # read in UTF-16 its pairs of bytes were all printable characters (Chinese, Gurmukhi): "is
    # UTF-16LE text", with an iconv command that made a file of nonsense
    path = tmp_path / "records.txt"
    path.write_bytes(data)
    with pytest.raises(CharrnnError, match=rf"records.txt looks like a binary file \(NUL byte at offset "
                                           rf"{data.index(0)}\)"):
        read_corpus([path])


@pytest.mark.skipif(not (shutil.which("iconv") and shutil.which("bash")), reason="needs iconv and bash")
@pytest.mark.parametrize("name", ["-notes.txt", os.fsdecode(b"caf\xe9 notes.txt"), "line\nbreak's.txt"])
def test_the_iconv_command_converts_a_file_whatever_its_name(tmp_path, monkeypatch, name):
    # the command, as the error line shows it, run by a shell: a name starting with '-' was taken
    # for an option, and a byte that is not UTF-8 or a line break was shown as an escape inside
    # quotes, which a shell takes as those characters
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(ASCII.encode("utf-16"))
    with pytest.raises(CharrnnError) as refused:
        read_corpus([Path(name)])
    command = one_line(str(refused.value)).split("e.g. ")[1]
    subprocess.run(["bash", "-c", command], check=True)
    converted = Path(name).with_name(f"{Path(name).stem}-utf8.txt")
    assert read_corpus([converted]).text == ASCII


@pytest.mark.parametrize("encoding", ["latin-1", "bytes"])
def test_in_the_encodings_that_read_any_byte_only_a_nul_makes_a_file_in_a_folder_wide_text(tmp_path, encoding):
    # a Latin-1 text that starts with the bytes of a UTF-16 mark, FE FF, and holds no NUL was read
    # before the check for wide text, and must still be
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_bytes(b"\xfe\xffcaf\xe9 au lait " * 3)
    (tmp_path / "f" / "wide.txt").write_bytes(("wide text " * 10).encode("utf-16"))
    corpus = read_corpus([tmp_path / "f"], encoding)
    assert [Path(f["path"]).name for f in corpus.files] == ["a.txt"]
    wide = tmp_path / "f" / "wide.txt"
    assert corpus.notes == [f"left out 1 file of UTF-16 or UTF-32 text: {wide}; save it as UTF-8 to read it, e.g. "
                            f"iconv -f UTF-16 -t UTF-8 {wide} > {wide.with_name('wide-utf8.txt')}"]


def test_a_binary_file_that_is_not_wide_text_is_still_binary(tmp_path):
    path = tmp_path / "counts.bin"
    path.write_bytes(bytes(range(256)) * 4)  # NUL at offset 0, but no pattern of UTF-16's
    with pytest.raises(CharrnnError, match=re.escape(f"{path} looks like a binary file (NUL byte at offset 0)")):
        read_corpus([path])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes and a terminal (pty)")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_named_pipe_not_yet_written_shows_that_the_text_is_being_read(tree, tmp_path, command):
    # train and eval waited for a writer without a word: a terminal showed nothing at all
    import pty
    import select

    from test_hostile import ROOT

    if command == "eval":
        (tree / "t.txt").write_text(TEXT, encoding="utf-8")
        Trainer(config(tree / "t.txt", tmp_path, max_steps=1), tmp_path / "m", say=lambda *_: None).run()
    pipe = tree / "notes" / "pipe"
    args = {"train": ["train", str(pipe), "--hidden", "8", "--batch", "2", "--k1", "8", "--max-steps", "1",
                      "--time-limit", "0", "--out-dir", str(tmp_path / "runs")],
            "eval": ["eval", str(tmp_path / "m"), str(pipe)]}[command]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: charrnn on a terminal
        env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100", TERM="xterm")
        os.execve(sys.executable, [sys.executable, "-m", "charrnn", *args], env)
    shown, deadline = b"", time.time() + 120
    while b"reading the text" not in shown and time.time() < deadline:
        if select.select([terminal], [], [], 1)[0]:
            shown += os.read(terminal, 4096)
    pipe.write_text(TEXT, encoding="utf-8")  # the writer comes: the command goes on and ends
    try:
        while select.select([terminal], [], [], 60)[0]:
            shown += os.read(terminal, 4096)
    except OSError:  # the terminal closes as the child ends
        pass
    _, status = os.waitpid(pid, 0)
    assert b"reading the text" in shown and os.waitstatus_to_exitcode(status) == 0, shown[-500:]


def test_separators_typed_with_escapes_and_what_is_refused(tmp_path):
    first, second = tmp_path / "1.txt", tmp_path / "2.txt"
    first.write_text(TEXT[:300], encoding="utf-8")
    second.write_text(TEXT[300:], encoding="utf-8")
    for typed, sep in ((r"\n\n", "\n\n"), (r"<\u00e9>\\", "<é>\\"), ("", "")):
        out = tmp_path / str(len(sep))
        r = CliRunner().invoke(app, ["train", str(first), str(second), "--doc-sep", typed, "--hidden", "4",
                                     "--batch", "2", "--k1", "8", "--k2", "8", "--max-steps", "1", "--out-dir", str(out),
                                     "--run", "r"])
        assert r.exit_code == 0, r.output
        _, meta = load_checkpoint(out / "r" / "latest.npz")
        assert meta["config"]["doc_sep"] == sep and meta["corpus"]["chars"] == len(TEXT) + len(sep)
    with pytest.raises(CharrnnError, match="not made of bytes"):
        TrainConfig(encoding="bytes", doc_sep="€").validate()
    with pytest.raises(CharrnnError, match="NUL"):
        TrainConfig(doc_sep="\0").validate()


def test_a_run_on_many_files_records_them_and_resumes_from_that_list(tree, tmp_path, monkeypatch, capsys):
    for i in range(3):
        (tree / "notes" / f"poem{i}.txt").write_text(TEXT[i * 150:(i + 1) * 150 + 100], encoding="utf-8")
    notes = []
    cfg = config(tree / "b.txt", tmp_path / "out", max_steps=3)
    cfg.corpus = [str(tree / "notes"), str(tree / "b.txt")]
    trainer = Trainer(cfg.validate(), tmp_path / "out" / "r", say=notes.append)
    assert any("logo.png" in n for n in notes)
    assert DOC_SEP in trainer.vocab.chars
    trainer.run()
    _, meta = load_checkpoint(tmp_path / "out" / "r" / "latest.npz")
    listed = [f["path"] for f in meta["corpus"]["files"]]
    assert listed[-1] == str(tree / "b.txt") and listed[:2] == [str(tree / "notes" / "B.txt"),
                                                                 str(tree / "notes" / "a b.txt")]
    assert meta["config"]["corpus"] == cfg.corpus and meta["config"]["doc_sep"] == DOC_SEP
    (tree / "notes" / "new.txt").write_text("added later\n")  # the folder grows; the run keeps its list
    resumed = Trainer.resume(tmp_path / "out" / "r", say=lambda *_: None, max_steps=5)
    assert [f["path"] for f in resumed.corpus_info["files"]] == listed
    resumed.run()
    code, err = main_exits(monkeypatch, capsys, "train", tree / "a.txt", "--doc-sep", r"\q")
    assert code == 2 and "is no escape this option knows" in err
    # a lone surrogate as an escape: \udcff was read as the byte 0xFF (as Python holds one)
    for escape in (r"\udcff", r"\uD800"):
        code, err = main_exits(monkeypatch, capsys, "train", tree / "a.txt", "--doc-sep", escape)
        assert code == 2 and f"{escape} in '{escape}' is a lone surrogate, which no text holds; use \\xHH" in err, err


def test_a_character_beyond_u_ffff_can_be_typed_as_an_escape():
    # \U0001d538 was "no escape this option knows", and the pair \ud835\udd38 (as JSON writes it)
    # "a lone surrogate": only the character itself could be typed
    import typer

    from charrnn.cli import _unescape

    assert _unescape(r"\U0001d538 \ud835\udd38 \U0001F600\n") == "\U0001d538 \U0001d538 \U0001f600\n"
    for escape, said in ((r"\U00110000", "beyond Unicode's last character"), (r"\U0000dc80", "a lone surrogate"),
                         (r"\udd38\ud835", "a lone surrogate"),
                         # too few hex digits: "\x in '\x4' is no escape this option knows"
                         (r"\U1d538", re.escape(r"\U in '\U1d538' takes 8 hex digits (\UHHHHHHHH)")),
                         (r"a\x4", re.escape(r"\x in 'a\x4' takes 2 hex digits (\xHH)")),
                         ("\\u00e", re.escape(r"\u in '\u00e' takes 4 hex digits (\uHHHH)"))):
        with pytest.raises(typer.BadParameter, match=said):
            _unescape(escape)


def test_quiet_leaves_out_the_samples_but_not_the_notes_on_the_text(tree, tmp_path, monkeypatch, capsys):
    # -q hid "left out 2 file(s) that are empty, binary or not UTF-8: logo.png ...": a scripted run
    # never learnt that a file it was given went unread
    (tree / "notes" / "poem.txt").write_text(TEXT, encoding="utf-8")
    code, err = main_exits(monkeypatch, capsys, "train", tree / "notes", "--hidden", "8", "--batch", "2", "--k1", "8",
                           "--max-steps", "2", "--sample-every", "2", "--sample-length", "10", "--out-dir",
                           tmp_path / "out", "--run", "r", "-q")
    assert code == 0, err
    assert any("left out 2 files that are empty, binary or not UTF-8" in line and "logo.png" in line
               for line in err.splitlines()), err
    assert "--- step 2," not in err and "--- step 2," in (tmp_path / "out" / "r" / "samples.txt").read_text()


def test_a_sample_while_training_is_shown_in_its_lines_with_its_controls_escaped(tree, tmp_path, monkeypatch, capsys):
    # every sample was shown on one line, its line breaks as \n
    monkeypatch.setattr(Trainer, "sample", lambda self: "To be,\n\tor not\x1b[2J\r\nto be")
    (tree / "notes" / "poem.txt").write_text(TEXT, encoding="utf-8")
    code, err = main_exits(monkeypatch, capsys, "train", tree / "notes" / "poem.txt", "--hidden", "8", "--batch", "2",
                           "--k1", "8", "--max-steps", "2", "--sample-every", "2", "--out-dir", tmp_path / "out",
                           "--run", "r")
    assert code == 0, err
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("--- step 2, epoch "))
    assert lines[at + 1: at + 4] == ["To be,", "\tor not\\x1b[2J\\r", "to be"], lines[at:]
    assert (tmp_path / "out" / "r" / "samples.txt").read_bytes().endswith(b"To be,\n\tor not\x1b[2J\r\nto be\n\n")


@pytest.mark.parametrize("args, named", [
    (["train", ""], "corpus"), (["train", "a.txt", ""], "corpus"),  # would train on every file below the folder
    (["train", "a.txt", "--out-dir", ""], "--out-dir"),  # would scatter its runs into the working folder
    (["train", "--resume", ""], "--resume"), (["sample", ""], "checkpoint"), (["eval", "r", ""], "file"),
    (["inspect", "r", "a.txt", "--html", ""], "--html"), (["plot", ""], "run"), (["gradflow", "--corpus", ""], "--corpus")])
def test_an_empty_name_is_refused_not_read_as_the_working_folder(tree, monkeypatch, capsys, args, named):
    # a script's unset variable: `charrnn train "$TEXT"` trained on every file below the working folder
    monkeypatch.chdir(tree)
    before = sorted(tree.rglob("*"))
    code, err = main_exits(monkeypatch, capsys, *args)
    assert code == 2 and err.startswith(f"error: Invalid value for '{named}': an empty name is no file or folder "), err
    assert sorted(tree.rglob("*")) == before


def test_a_run_that_read_one_file_by_two_names_resumes_reading_both(tree, tmp_path):
    # a run from before files were told apart by device and inode read a hard link as a file of
    # its own; its resume read it once, and refused it as no longer a file of its own
    twin = tree / "twin.txt"
    (tree / "b.txt").write_text(TEXT, encoding="utf-8")
    twin.write_text(TEXT, encoding="utf-8")  # a file of its own, as then
    cfg = config(tree / "b.txt", tmp_path / "out", max_steps=3)
    cfg.corpus = [str(tree / "b.txt"), str(twin)]
    Trainer(cfg.validate(), tmp_path / "out" / "r", say=lambda *_: None).run()
    twin.unlink()
    os.link(tree / "b.txt", twin)  # now the same file, as a hard link was then
    resumed = Trainer.resume(tmp_path / "out" / "r", say=lambda *_: None, max_steps=5)
    assert [f["path"] for f in resumed.corpus_info["files"]] == [str(tree / "b.txt"), str(twin)]
    assert resumed.run()["steps"] == 5
    twin.unlink()
    twin.symlink_to(tree / "a.txt")  # another file of the text, by a link: not what the run read
    with pytest.raises(CharrnnError, match=re.escape(f"{twin} (now a link to {tree / 'a.txt'}) has changed since")):
        Trainer.resume(tmp_path / "out" / "r", say=lambda *_: None, max_steps=7)


def test_a_sample_without_a_prime_starts_as_a_document_of_the_run_does(tree, tmp_path):
    # a model of many files read the separator before each document but the first: unprimed, it
    # starts after one, as primed with it; a model of one file has no separator: after a line break
    from charrnn.api import load

    (tree / "one.txt").write_text(TEXT, encoding="utf-8")
    for name, corpus in (("many", [str(tree / "notes"), str(tree / "b.txt")]), ("one", [str(tree / "one.txt")])):
        cfg = config(tree / "b.txt", tmp_path / "out", max_steps=60, lr=0.02, dropout=0.0, eval_every=60)
        cfg.corpus = corpus
        Trainer(cfg.validate(), tmp_path / "out" / name, say=lambda *_: None).run()
    many, one = load(tmp_path / "out" / "many"), load(tmp_path / "out" / "one")
    assert DOC_SEP in many.vocab and DOC_SEP not in one.vocab
    for model, start, other in ((many, DOC_SEP, "\n"), (one, "\n", " ")):
        unprimed = model.sample(60, seed=4)
        assert unprimed == model.sample(60, seed=4, prime=start)[len(start):]
        assert unprimed != model.sample(60, seed=4, prime=other)[len(other):]  # where it starts shows


def test_a_model_of_one_file_starts_after_a_line_break_whatever_its_doc_sep(tree, tmp_path):
    # a one-file run given --doc-sep '\n\n', whose characters its text holds, started its
    # unprimed samples after '\n\n', a separator it never read (none is put in one file)
    from charrnn.api import load

    (tree / "one.txt").write_text(TEXT, encoding="utf-8")
    cfg = config(tree / "one.txt", tmp_path / "out", max_steps=60, lr=0.02, dropout=0.0, eval_every=60,
                 doc_sep="\n\n", sample_every=60, sample_length=60)
    Trainer(cfg, tmp_path / "out" / "one", say=lambda *_: None).run()
    model = load(tmp_path / "out" / "one")
    unprimed = model.sample(60, seed=60)
    assert unprimed == model.sample(60, seed=60, prime="\n")[1:] != model.sample(60, seed=60, prime="\n\n")[2:]
    # and so does the sample taken while training, as `charrnn sample --seed 60` gives it
    taken = (tmp_path / "out" / "one" / "samples.txt").read_text().split("\n", 1)[1]
    assert taken == model.sample(60, seed=60, temperature=0.8) + "\n\n"


def test_folders_nested_too_deep_to_walk_are_one_line(tmp_path):
    # os.walk recurses on Python 3.11: a folder 1,200 levels deep was "internal error (RecursionError ...)"
    from charrnn.corpus import list_files
    from charrnn.errors import CharrnnError

    top = tmp_path / "deep"
    top.mkdir()
    (top / "a.txt").write_text("the cat sat\n")
    folders = [top]
    for _ in range(1200):
        folders.append(folders[-1] / "d")
        folders[-1].mkdir()
    try:
        files, _ = list_files([top])
    except CharrnnError as e:
        assert str(e).startswith(f"{top} holds folders nested too deep to walk")
    else:  # a Python whose walk does not recurse
        assert files == [top / "a.txt"]
    finally:  # from the bottom up: pytest's own clean-up recurses too, and would fail as the walk did
        for folder in reversed(folders[1:]):
            folder.rmdir()
