from flywheel_pipelines.lib.markdown import table


def test_table_escapes_pipes_and_newlines():
    out = table(["a", "b"], [(1, "x|y"), ("multi\nline", "")])
    assert out.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | x\\|y |", "| multi line |  |"]
