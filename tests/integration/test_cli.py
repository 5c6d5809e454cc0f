"""The command line: --help, --version, usage errors, --check-config with
file:line:key errors, the built-in setup's explanation when no model is
configured, secrets from NAME_FILE, and --print-redis with the
PARLEY_REDIS override.  No servers needed."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PARLEY_BIN, Test, require_parley, run_cases, \
    write_config

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith(("OPENAI_", "PARLEY_REDIS", "TEST_OPENAI"))}


def run(args, env=None, stdin=b""):
    e = dict(CLEAN_ENV)
    e.update(env or {})
    p = subprocess.run([PARLEY_BIN] + args, input=stdin, env=e,
                       capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_help_version_usage():
    code, out, _ = run(["--help"])
    assert code == 0 and "--check-config" in out
    code, out, _ = run(["--version"])
    assert code == 0 and out.startswith("parley ")
    code, _, err = run(["--no-such-option"])
    assert code == 64 and "usage" in err
    code, _, err = run(["stray-argument"])
    assert code == 64


def test_check_config_ok_and_errors():
    with Test() as t:
        good = write_config(t.tmp, "http://127.0.0.1:9/v1", 6399)
        code, out, err = run(["-c", good, "--check-config"])
        assert code == 0, err
        assert "configuration OK" in out
        bad = os.path.join(t.tmp, "bad.conf")
        with open(bad, "w") as f:
            f.write('bot = { name = "x"; };\n'
                    'llm = {\n'
                    '  base_url = "ftp://nowhere";\n'
                    '  temperature = 9.0;\n'
                    '};\n')
        code, _, err = run(["-c", bad, "--check-config"])
        assert code == 78, (code, err)
        assert "bad.conf:3" in err and "base_url" in err, err
        assert "bad.conf:4" in err and "temperature" in err, err
        syntax = os.path.join(t.tmp, "syntax.conf")
        with open(syntax, "w") as f:
            f.write('bot = {\n  name = "x"\n  oops\n};\n')
        code, _, err = run(["-c", syntax, "--check-config"])
        assert code == 78 and "syntax.conf:" in err, err
        code, _, err = run(["-c", os.path.join(t.tmp, "missing.conf")])
        assert code == 78 and "missing.conf" in err, err


def test_check_config_reports_adapter_errors_with_the_rest():
    """Adapter blocks are checked in the same pass as the core: one run
    shows the core, IRC and Matrix problems together, and an old greeting
    name is a warning that names the new one."""
    with Test() as t:
        bad = os.path.join(t.tmp, "mixed.conf")
        with open(bad, "w") as f:
            f.write('llm = { temperature = 9.0; };\n'
                    'adapters = (\n'
                    '  { type = "irc"; host = "h"; nick = "1bad"; },\n'
                    '  { type = "matrix"; homeserver = "ftp://x";\n'
                    '    user_id = "@p:x.org"; password_env = "PW"; }\n'
                    ');\n')
        code, _, err = run(["-c", bad, "--check-config"])
        assert code == 78, (code, err)
        assert "mixed.conf:1: llm.temperature" in err, err
        assert "mixed.conf:3: adapters.[0].nick" in err, err
        assert "mixed.conf:4: adapters.[1].homeserver" in err, err
        old = os.path.join(t.tmp, "old.conf")
        with open(old, "w") as f:
            f.write('adapters = ( { type = "console";\n'
                    '  greet_users = true; } );\n')
        code, out, err = run(["-c", old, "--check-config"])
        assert "old.conf:2: adapters[0].greet_users: deprecated, use " \
            "greet_new_members" in err, (code, out, err)


def test_secret_in_file_is_rejected():
    with Test() as t:
        conf = os.path.join(t.tmp, "secret.conf")
        with open(conf, "w") as f:
            f.write('llm = { api_key = "sk-in-the-file-123456789"; };\n')
        code, out, err = run(["-c", conf, "--check-config"])
        assert code == 78
        assert "api_key_env" in err, err
        assert "sk-in-the-file-123456789" not in out + err


def test_builtin_setup_explains_what_to_set():
    code, out, err = run([], stdin=b"hello\n")
    assert code == 78, (code, err)
    assert "OPENAI_API_KEY" in err and "OPENAI_BASE_URL" in err, err


def test_api_key_file_and_missing_key():
    with Test() as t:
        conf = write_config(t.tmp, "https://api.openai.com/v1", 6399)
        code, _, err = run(["-c", conf, "--check-config"])
        assert code == 78 and "TEST_OPENAI_KEY" in err, err
        keyfile = os.path.join(t.tmp, "key")
        with open(keyfile, "w") as f:
            f.write("sk-from-a-file-0123456789\n")
        code, out, err = run(["-c", conf, "--check-config"],
                             env={"TEST_OPENAI_KEY_FILE": keyfile})
        assert code == 0, err
        assert "sk-from-a-file" not in out + err
        code, _, err = run(["-c", conf, "--check-config"],
                           env={"TEST_OPENAI_KEY_FILE":
                                os.path.join(t.tmp, "nope")})
        assert code == 78 and "TEST_OPENAI_KEY_FILE" in err, err


def test_example_config_with_every_adapter_checks():
    """bot.conf.example as shipped, and with its IRC, Matrix and web blocks
    uncommented, passes --check-config (adapters validate their blocks)."""
    from harness import SOURCE_DIR
    example = os.path.join(SOURCE_DIR, "bot.conf.example")
    env = {"OPENAI_API_KEY": "sk-example-0123456789",
           "IRC_SASL_PASSWORD": "x", "MATRIX_PASSWORD": "y"}
    code, out, err = run(["-c", example, "--check-config"], env=env)
    assert code == 0, err
    with Test() as t:
        lines = []
        for line in open(example):
            if line.startswith("    # , {"):
                line = "    , {\n"
            elif line.startswith("    #     "):
                line = "        " + line[len("    #     "):]
            elif line.startswith("    #   }"):
                line = "      }\n"
            lines.append(line)
        full = os.path.join(t.tmp, "full.conf")
        with open(full, "w") as f:
            f.writelines(lines)
        code, out, err = run(["-c", full, "--check-config"], env=env)
        assert code == 0, err
        assert "4 adapter(s)" in out, out
        # A typo inside an adapter block is reported with file and line.
        bad = os.path.join(t.tmp, "bad.conf")
        with open(bad, "w") as f:
            f.write("".join(lines).replace("flood_burst", "flod_burst"))
        code, out, err = run(["-c", bad, "--check-config"], env=env)
        assert code == 78 and "flod_burst" in err and "bad.conf:" in err, err


def test_print_redis_and_override():
    with Test() as t:
        conf = write_config(t.tmp, "http://127.0.0.1:9/v1", 6391)
        code, out, _ = run(["-c", conf, "--print-redis"])
        assert code == 0 and out.strip() == "tcp 127.0.0.1 6391", out
        code, out, _ = run(["-c", conf, "--print-redis"],
                           env={"PARLEY_REDIS": "unix:/tmp/r.sock"})
        assert out.strip() == "unix /tmp/r.sock", out
        code, out, _ = run(["--print-redis"],
                           env={"PARLEY_REDIS": "10.1.2.3:7000"})
        assert out.strip() == "tcp 10.1.2.3 7000", out
        code, _, err = run(["--print-redis"],
                           env={"PARLEY_REDIS": "nonsense"})
        assert code == 78 and "PARLEY_REDIS" in err


if __name__ == "__main__":
    require_parley()
    run_cases([test_help_version_usage, test_check_config_ok_and_errors,
               test_check_config_reports_adapter_errors_with_the_rest,
               test_secret_in_file_is_rejected,
               test_builtin_setup_explains_what_to_set,
               test_api_key_file_and_missing_key,
               test_example_config_with_every_adapter_checks,
               test_print_redis_and_override])
