"""Parameter values go into task text as data (issue 22, item 2): shell, Python, SQL, http."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.render import (
    RenderError,
    bind_sql,
    render_body,
    render_header,
    render_python,
    render_shell,
    render_url,
)
from shoal.core.sqlsplit import split_sql

# Any text but NUL (which no shell string can hold; it is refused, see below).
values = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                 max_size=40)
one_line = st.text(st.characters(blacklist_characters="\x00\n\r",
                                 blacklist_categories=("Cs",)), max_size=40)

CORPUS = ["x'; touch {f}; echo '", 'x"; touch {f}; echo "', "$(touch {f})", "`touch {f}`",
          "a\ntouch {f}", "a && touch {f}", "a || touch {f}", "a; touch {f} #", "-- touch {f}",
          "'\"'\"$(touch {f})", "\\'; touch {f}; #", "${{IFS}}touch${{IFS}}{f}",
          "a\\\ntouch {f}", "'$'\\x27'; touch {f}; '"]


def sh(script: str, shell: str = "bash") -> str:
    out = subprocess.run([shell, "-c", script], capture_output=True, check=False,
                         timeout=10).stdout
    return out.decode("utf-8", "surrogateescape")


SHELL_CONTEXTS = [
    ("printf %s ${v}", lambda v: v),
    ('printf %s "${v}"', lambda v: v),
    ("printf %s '${v}'", lambda v: v),
    ("printf %s x${v}y", lambda v: f"x{v}y"),
    ('printf %s "a ${v} b"', lambda v: f"a {v} b"),
    ("printf %s 'a ${v} b'", lambda v: f"a {v} b"),
    ("printf %s \"$(printf %s ${v})\"", lambda v: v.rstrip("\n")),
    ("printf %s \"`printf %s ${v}`\"", lambda v: v.rstrip("\n")),
    ("# ${v}\nprintf %s ok", lambda v: "ok"),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=values, ctx=st.sampled_from(range(len(SHELL_CONTEXTS))))
def test_a_shell_value_round_trips_exactly_in_every_context(v, ctx):
    template, expected = SHELL_CONTEXTS[ctx]
    assert sh(render_shell(template, {"v": v}.get)) == expected(v)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=values)
def test_posix_sh_reads_the_quoted_value_exactly(v):
    for template in ("printf %s ${v}", 'printf %s "${v}"', "printf %s '${v}'"):
        assert sh(render_shell(template, {"v": v}.get), "sh") == v


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=one_line)
def test_here_documents_take_one_line_values_as_data(v):
    assert sh(render_shell("cat <<EOF\n[${v}]\nEOF\n", {"v": v}.get)) == f"[{v}]\n"
    assert sh(render_shell("cat <<'EOF'\n[${v}]\nEOF\n", {"v": v}.get)) == f"[{v}]\n"


def test_a_newline_cannot_end_a_here_document_and_arithmetic_takes_integers_only():
    with pytest.raises(RenderError, match="param 'v' holds a newline"):
        render_shell("cat <<EOF\n${v}\nEOF", {"v": "x\nEOF\ntouch f"}.get)
    assert sh(render_shell("echo $(( ${n} * 2 ))", {"n": "21"}.get)) == "42\n"
    with pytest.raises(RenderError, match="must be an integer"):
        render_shell("echo $(( ${n} ))", {"n": "a[$(touch f)]"}.get)
    with pytest.raises(RenderError, match="NUL"):
        render_shell("echo ${v}", {"v": "a\x00b"}.get)


@pytest.mark.parametrize("value", CORPUS)
@pytest.mark.parametrize("template", ["echo hello ${who}", 'echo "hello ${who}"',
                                      "echo 'hello ${who}'", "x=${who}; echo \"$x\"",
                                      "echo $(echo ${who})", "echo `echo ${who}`",
                                      "# ${who}\necho done", "echo '${setValue(w=${who})}'"])
def test_the_injection_corpus_runs_nothing_in_a_shell(tmp_path: Path, value, template):
    target = tmp_path / "pwned"
    v = value.format(f=target)
    sh(render_shell(template, {"who": v}.get))
    assert not target.exists()


def test_dolphinscheduler_scripts_keep_working():
    params = {"bizdate": "20240101", "n": "42", "region": "eu"}.get
    assert sh(render_shell('echo "extracting ${bizdate} ${region}"\n'
                           "echo '${setValue(rows=${n})}'\necho ${HOME:+home}\n"
                           "echo \\${bizdate}", params)) == \
        "extracting 20240101 eu\n${setValue(rows=42)}\nhome\n${bizdate}\n"
    # A name that is not a param stays a shell variable.
    assert render_shell("echo ${HOME} ${unknown}", params) == "echo ${HOME} ${unknown}"


PY_CONTEXTS = ['out = ${v}', 'out = "${v}"', "out = '${v}'", 'out = """${v}"""',
               "out = '''${v}'''", 'out = r"${v}"', "out = f\"${v}\"", "out = rb'${v}'.decode()",
               'out = b"${v}".decode()', '# ${v}\nout = ${v}', 'out = "<%s>" % "${v}"']


@settings(max_examples=150, deadline=None)
@given(v=values, ctx=st.sampled_from(range(len(PY_CONTEXTS))))
def test_a_python_value_round_trips_as_a_string(v, ctx):
    template = PY_CONTEXTS[ctx]
    ns: dict[str, object] = {}
    exec(render_python(template, {"v": v}.get), ns)
    assert ns["out"] == (f"<{v}>" if "<%s>" in template else v)


def test_python_injection_corpus_runs_nothing(tmp_path: Path):
    target = tmp_path / "pwned"
    for value in ['"); open(%r, "w") #', "'); open(%r, 'w') #", "\nopen(%r, 'w')",
                  '""" + str(open(%r, "w")) + """', "{open(%r, 'w')}"]:
        v = value % str(target)
        for template in PY_CONTEXTS:
            exec(render_python(template, {"v": v}.get), {})
    assert not target.exists()



@settings(max_examples=200, deadline=None)
@given(v=values, ptype=st.sampled_from(["int", "float", "bool"]))
def test_a_typed_python_value_is_its_literal_or_a_string(v, ptype):
    """A bare reference to a param declared int/float/bool is the number (or bool) when
    the value is one, else the string; nothing else is ever evaluated."""
    ns: dict[str, object] = {}
    exec(render_python("out = ${v}", {"v": v}.get, {"v": ptype}), ns)
    out = ns["out"]
    if isinstance(out, str):
        assert out == v
    else:
        assert ptype == {int: "int", float: "float", bool: "bool"}[type(out)]
        if ptype == "bool":
            assert out is (v.strip().lower() in {"true", "1", "yes", "t", "y", "on"})
        else:
            assert out == {"int": int, "float": float}[ptype](v.strip())


def test_dolphinscheduler_arithmetic_on_a_declared_int_works():
    ns: dict[str, object] = {}
    script = 'n = ${n} + 1\nx = ${x} * 2\nok = ${ok}\ns = "${n}"'
    exec(render_python(script, {"n": "41", "x": "1.5", "ok": "yes"}.get,
                       {"n": "int", "x": "float", "ok": "bool"}), ns)
    assert (ns["n"], ns["x"], ns["ok"], ns["s"]) == (42, 3.0, True, "41")
    target_free = render_python("n = ${n}", {"n": "1; import os"}.get, {"n": "int"})
    assert target_free == "n = '1; import os'"

sql_pieces = st.sampled_from([
    "select ", "${a}", "'${a}'", "'x${a}y'", " -- ${a}\n", "/* ${a} */", " ; ", "1",
    " where t = ", "${b}", "'it''s'", "E'\\'${a}'", " and ", '"col"', "${nope}"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(sql_pieces, max_size=12))
def test_binding_never_changes_the_statement_count(parts):
    script = "".join(parts)
    known = {"a", "b"}.__contains__
    for statement in split_sql(script):
        bound, names = bind_sql(statement, known)
        assert len(split_sql(bound)) == 1
        assert set(names) <= {"a", "b"}
        assert bound.count("$") >= len(names)


def test_sql_binds_like_dolphinscheduler():
    known = {"day", "rows", "who"}.__contains__
    assert bind_sql("insert into t(day, n) values ('${day}', ${rows})", known) == (
        "insert into t(day, n) values ($1, $2)", ["day", "rows"])
    assert bind_sql("select 'p_${day}' as x -- ${who}", known) == (
        "select 'p_' || $1::text || '' as x -- ${who}", ["day"])
    assert bind_sql("select ${nope}, \"${day}\"", known) == ("select ${nope}, $1", ["day"])
    with pytest.raises(RenderError, match="dollar-quoted"):
        bind_sql("do $$ begin perform '${day}'; end $$", known)


@settings(max_examples=150, deadline=None)
@given(v=values)
def test_a_url_value_is_one_component_and_a_json_value_stays_a_string(v):
    url = render_url("https://hooks.example.com/p/${v}?q=${v}#f", {"v": v}.get)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.fragment) == ("https", "hooks.example.com", "f")
    assert parts.path.count("/") == 2 and unquote(parts.path.split("/")[2]) == v
    assert unquote(parts.query[2:]) == v
    body = render_body('{"a": "${v}", "b": ${v}, "n": ${n}}', {"v": v, "n": "42"}.get)
    scalar = re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null", v)
    assert json.loads(body) == {"a": v, "b": json.loads(v) if scalar else v, "n": 42}


def test_a_header_value_cannot_add_a_header():
    assert render_header("Bearer ${t}", {"t": "abc"}.get) == "Bearer abc"
    with pytest.raises(RenderError, match="line break"):
        render_header("${t}", {"t": "a\r\nX-Evil: 1"}.get)


def test_a_case_pattern_inside_a_substitution_keeps_the_context(tmp_path: Path):
    target = tmp_path / "pwned"
    v = f"a; touch {target}"
    script = 'echo "$(case x in x) echo ${v};; esac)"; echo $(case y in (y) echo ${v};; esac)'
    assert sh(render_shell(script, {"v": v}.get)) == f"{v}\n{v}\n"
    assert not target.exists()
