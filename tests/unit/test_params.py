from shoal.core.params import expand, parse_outputs


def test_expand_known_names_and_leave_the_rest():
    assert expand("echo ${a} ${HOME} ${b.c}", {"a": "1", "b.c": "2"}) == "echo 1 ${HOME} 2"


def test_expansion_is_not_recursive():
    assert expand("${a}", {"a": "${b}", "b": "x"}) == "${b}"


def test_outputs_only_declared_last_value_wins():
    lines = ["${setValue(rows=1)}", "noise ${setValue(other=2)}", "${setValue( rows = 42 )}"]
    assert parse_outputs(lines, ["rows"]) == {"rows": "42"}
