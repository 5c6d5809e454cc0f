#!/usr/bin/env python3
"""docker/ is right by construction: no container engine runs here.

Dockerfile (parsed, instruction by instruction): both stages FROM
debian:12-slim; the builder installs with scripts/install-deps.sh and
builds with the same cmake flags as scripts/run.sh; the runtime stage
installs only runtime libraries that exist in Debian 12, cleans apt lists,
runs as a non-root USER before CMD, has a HEALTHCHECK on /healthz, adds no
URLs and puts no secret in ENV/ARG.  When the built binary is there
(PARLEY_BIN), every shared library it needs must come from a package the
runtime stage installs (or from the base image).

docker-compose.yml: `docker-compose config` (Debian's 1.29) accepts it with
a .env made from .env.example, and the result has the Redis service with
AOF, a named volume and a ping healthcheck, and parley depending on it
being healthy; a broken copy is rejected, so the check can fail.  Exits 77
(skipped) after the Dockerfile checks if docker-compose is not installed.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get("PARLEY_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(SRC, "docker")

# In debian:12-slim already (Priority: required), so the runtime stage
# need not install them.
BASE_PACKAGES = {"libc6", "libgcc-s1", "libzstd1", "zlib1g", "libstdc++6"}

failures = []
fail_prefix = "FAIL: "


def fail(msg):
    failures.append(msg)
    print(fail_prefix + msg)


def run(args, **kw):
    return subprocess.run(args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def instructions(path):
    """Dockerfile -> list of (INSTRUCTION, argument text), continuation
    lines joined and comments dropped."""
    out, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if cur and line.lstrip().startswith("#"):
                continue        # comment inside a continued instruction
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    if cur:
        fail("Dockerfile ends inside a continued line")
    return out


def stages(instrs):
    """Split at FROM: list of (from argument, [instructions])."""
    result = []
    for ins, arg in instrs:
        if ins == "FROM":
            result.append((arg, []))
        elif not result:
            if ins != "ARG":
                fail("Dockerfile: %s before the first FROM" % ins)
        else:
            result[-1][1].append((ins, arg))
    return result


def runtime_packages(stage):
    pkgs = []
    for ins, arg in stage:
        if ins == "RUN" and "apt-get install" in arg:
            words = shlex.split(arg.split("apt-get install", 1)[1]
                                .split("&&")[0])
            pkgs += [w for w in words if not w.startswith("-")]
    return pkgs


def run_sh_cmake_flags():
    with open(os.path.join(SRC, "scripts", "run.sh")) as f:
        text = f.read().replace("\\\n", " ")
    m = re.search(r"cmake -S \. -B build ([^\n>)]*)", text)
    return set(re.findall(r"-D\S+", m.group(1))) if m else set()


def check_dockerfile(path):
    st = stages(instructions(path))
    if len(st) != 2:
        fail("Dockerfile has %d stages, want 2 (builder, runtime)" % len(st))
        return []
    for frm, _ in st:
        image = frm.split()[0]
        if image != "debian:12-slim":
            fail("Dockerfile: FROM %s, want debian:12-slim" % frm)
    (bfrom, build), (_, rt) = st
    if not re.search(r"\bAS\s+builder\b", bfrom, re.I):
        fail("Dockerfile: first stage should be named 'AS builder'")

    all_ins = build + rt
    for ins, arg in all_ins:
        if ins == "ADD" and re.search(r"\b(https?|ftp)://", arg):
            fail("Dockerfile: ADD of a URL (%s); download in RUN and "
                 "verify, or COPY" % arg)
        if ins in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=?", arg)[:1]:
                if (re.search(r"KEY|TOKEN|PASSW|SECRET", name, re.I)
                        and not name.endswith("_FILE")):
                    fail("Dockerfile: %s %s puts a secret in the image"
                         % (ins, name))
        if ins == "RUN" and ("apt-get install" in arg
                             or "install-deps.sh" in arg):
            if "rm -rf /var/lib/apt/lists" not in arg:
                fail("Dockerfile: RUN installs packages without "
                     "rm -rf /var/lib/apt/lists/*: %s" % arg[:60])
        if ins == "RUN" and "apt-get install" in arg:
            if "--no-install-recommends" not in arg or " -y" not in arg:
                fail("Dockerfile: apt-get install without -y "
                     "--no-install-recommends")
        if ins == "RUN" and "apt-get upgrade" in arg:
            fail("Dockerfile: apt-get upgrade makes builds unrepeatable")

    b_runs = [arg for ins, arg in build if ins == "RUN"]
    if not any(re.search(r"(^|\s)(bash\s+)?(\./)?scripts/install-deps\.sh"
                         r"(\s|$)", r) for r in b_runs):
        fail("Dockerfile: builder must RUN scripts/install-deps.sh, "
             "the same step as CI")
    if any("--test" in r and "install-deps" in r for r in b_runs):
        fail("Dockerfile: builder installs test packages (--test)")
    cm = [r for r in b_runs if "cmake -S . -B build" in r]
    if not cm:
        fail("Dockerfile: builder does not run cmake -S . -B build")
    else:
        want = run_sh_cmake_flags()
        have = set(cm[0].split())
        if not want:
            fail("could not find the cmake line in scripts/run.sh")
        elif not want <= have:
            fail("Dockerfile cmake flags differ from scripts/run.sh: "
                 "missing %s" % sorted(want - have))
        if "cmake --build build" not in cm[0]:
            fail("Dockerfile: builder does not run cmake --build build")

    # Runtime stage: user, command, health check, packages.
    names = [ins for ins, _ in rt]
    if "CMD" not in names:
        fail("Dockerfile: runtime stage has no CMD")
    else:
        cmd_at = len(names) - 1 - names[::-1].index("CMD")
        users = [(i, arg) for i, (ins, arg) in enumerate(rt)
                 if ins == "USER" and i < cmd_at]
        if not users:
            fail("Dockerfile: no USER before CMD (runs as root)")
        elif users[-1][1].split(":")[0] in ("root", "0"):
            fail("Dockerfile: USER %s is root" % users[-1][1])
        if rt[cmd_at][1] != '["parley", "-c", "/etc/parley/bot.conf"]':
            fail("Dockerfile: CMD is %s, want "
                 '["parley", "-c", "/etc/parley/bot.conf"]' % rt[cmd_at][1])
    hc = [arg for ins, arg in rt if ins == "HEALTHCHECK"]
    if not hc or "/healthz" not in hc[0] or "9464" not in hc[0]:
        fail("Dockerfile: runtime stage needs a HEALTHCHECK on "
             "http://127.0.0.1:9464/healthz")
    if any(ins == "COPY" and "--from=builder" not in arg for ins, arg in rt):
        fail("Dockerfile: runtime stage copies from the build context; "
             "only the built binary belongs there")
    pkgs = runtime_packages(rt)
    for p in pkgs:
        if p.endswith("-dev") or p in ("build-essential", "cmake", "gcc"):
            fail("Dockerfile: runtime stage installs build package %s" % p)
    for need in ("ca-certificates", "curl"):
        if need not in pkgs:
            fail("Dockerfile: runtime stage lacks %s" % need)
    # Without package lists (apt-get update never ran, or they were
    # cleaned) apt-cache knows no candidates at all: nothing to compare.
    known = apt_candidates(pkgs + ["libc6"])
    if known is not None and known.get("libc6"):
        for p in pkgs:
            if not known.get(p):
                fail("Dockerfile: runtime package %s is not in Debian's "
                     "package lists (apt-cache policy)" % p)
    return pkgs


_candidates = {}


def apt_candidates(pkgs):
    """{package: has a candidate version}, from one apt-cache call for all
    names not asked before (each call reads the package lists, which takes
    most of a second); None without apt-cache."""
    if not shutil.which("apt-cache"):
        return None
    ask = sorted(set(p for p in pkgs if p not in _candidates))
    if ask:
        out = run(["apt-cache", "policy"] + ask).stdout
        for p in ask:
            _candidates[p] = False
        name = None
        for line in out.splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                name = line[:-1].split(":")[0]
            elif name and line.strip().startswith("Candidate:"):
                _candidates[name] = "(none)" not in line
    return {p: _candidates[p] for p in pkgs}


def check_binary_libraries(pkgs):
    """Each DT_NEEDED library of the built binary must be provided by a
    runtime-stage package or the base image."""
    binary = os.environ.get("PARLEY_BIN", "")
    tools = all(shutil.which(t) for t in ("readelf", "ldconfig", "dpkg"))
    if not (binary and os.path.exists(binary) and tools):
        print("note: no PARLEY_BIN (or readelf/dpkg), library check skipped")
        return
    r = run(["readelf", "-d", binary])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        r.stdout)
    cache = run(["ldconfig", "-p"]).stdout
    # Sanitizer runtimes only exist in the test build.
    needed = [n for n in needed if not re.match(r"lib(a|ub|l|t)san", n)]
    for so in needed:
        m = re.search(r"^\s*" + re.escape(so) + r" \(.*?\) => (\S+)$",
                      cache, re.M)
        if not m:
            fail("%s needs %s, which ldconfig does not know" % (binary, so))
            continue
        found = None
        p = m.group(1)
        for cand in (p, os.path.realpath(p), p.replace("/usr/lib/", "/lib/"),
                     p.replace("/lib/", "/usr/lib/", 1)):
            d = run(["dpkg", "-S", cand])
            if d.returncode == 0:
                found = d.stdout.split(":")[0]
                break
        if not found:
            fail("no Debian package owns %s (%s)" % (p, so))
        elif found not in pkgs and found not in BASE_PACKAGES:
            fail("parley needs %s from package %s, which the Dockerfile's "
                 "runtime stage does not install" % (so, found))
        else:
            print("ok: %s from %s" % (so, found))


def compose_config(workdir, compose):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and k not in
           ("PARLEY_CONFIG", "REDIS_PASSWORD", "DOCKER_HOST")}
    return run(["docker-compose", "-f", compose, "config"], cwd=workdir,
               env=env, timeout=60)


def check_compose(compose_bin):
    try:
        import yaml
    except ImportError:
        fail("python3-yaml missing (docker-compose depends on it)")
        return
    with open(os.path.join(DOCKER, ".env.example")) as f:
        example = f.read()
    with open(os.path.join(DOCKER, "docker-compose.yml")) as f:
        compose_text = f.read()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.M))
    for var in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "REDIS_PASSWORD"):
        if var not in listed:
            fail(".env.example does not list %s" % var)
    for var in set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", compose_text)):
        if var not in listed:
            fail("docker-compose.yml uses ${%s}, not in .env.example" % var)

    with open(os.path.join(DOCKER, "redis.conf")) as f:
        rconf = f.read()
    for want in (r"^appendonly yes$", r"^appendfsync everysec$",
                 r"^dir /data$"):
        if not re.search(want, rconf, re.M):
            fail("docker/redis.conf lacks %s" % want.strip("^$"))

    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "docker")
        shutil.copytree(DOCKER, d, ignore=shutil.ignore_patterns(
            ".env", "bot.conf"))
        shutil.copy(os.path.join(d, ".env.example"), os.path.join(d, ".env"))
        with open(os.path.join(d, "bot.conf"), "w") as f:
            f.write("bot: { name = \"parley\"; };\n")
        compose = os.path.join(d, "docker-compose.yml")
        r = compose_config(d, compose)
        if r.returncode != 0:
            fail("docker-compose config failed:\n" + r.stdout)
            return
        if "WARNING" in r.stdout:
            fail("docker-compose config warns:\n" + r.stdout)
        cfg = yaml.safe_load(r.stdout)
        svc = cfg.get("services", {})
        redis, parley = svc.get("redis"), svc.get("parley")
        if not redis or not parley:
            fail("compose services are %s, want redis and parley"
                 % sorted(svc))
            return

        if not str(redis.get("image", "")).startswith("redis:7"):
            fail("redis image is %s, want redis:7-..." % redis.get("image"))
        cmd = " ".join(redis.get("command") or [])
        if "redis-server /usr/local/etc/redis/redis.conf" not in cmd:
            fail("redis command does not load redis.conf: %s" % cmd)
        test = " ".join(redis.get("healthcheck", {}).get("test", []))
        if "redis-cli" not in test or "ping" not in test:
            fail("redis healthcheck is not redis-cli ping: %s" % test)
        vols = redis.get("volumes", [])
        named = [v for v in vols if isinstance(v, str)
                 and v.split(":")[0] in cfg.get("volumes", {})
                 and v.split(":")[1] == "/data"]
        if not named:
            fail("redis has no named volume on /data: %s" % vols)
        conf_mount = [v for v in vols if isinstance(v, dict) and
                      v.get("target") == "/usr/local/etc/redis/redis.conf"]
        if not conf_mount or not conf_mount[0].get("read_only"):
            fail("redis.conf is not mounted read-only")
        for name, s in (("redis", redis), ("parley", parley)):
            if s.get("restart") != "unless-stopped":
                fail("%s restart is %s, want unless-stopped"
                     % (name, s.get("restart")))

        dep = parley.get("depends_on", {})
        if not isinstance(dep, dict) or \
                dep.get("redis", {}).get("condition") != "service_healthy":
            fail("parley does not depend on redis being healthy: %s" % dep)
        build = parley.get("build", {})
        if build.get("dockerfile") != "docker/Dockerfile" or \
                os.path.realpath(build.get("context", "")) != \
                os.path.realpath(tmp):
            fail("parley build is %s, want context .. and "
                 "docker/Dockerfile" % build)
        envs = parley.get("environment", {})
        if envs.get("PARLEY_REDIS") != "redis:6379":
            fail("parley PARLEY_REDIS is %s" % envs.get("PARLEY_REDIS"))
        if "REDIS_PASSWORD" not in envs:
            fail("parley does not read .env (env_file)")
        mounts = [v for v in parley.get("volumes", []) if isinstance(v, dict)
                  and v.get("target") == "/etc/parley/bot.conf"]
        if not mounts or not mounts[0].get("read_only"):
            fail("bot.conf is not mounted read-only at /etc/parley/bot.conf")
        for k, v in envs.items():
            if re.search(r"KEY|TOKEN|SECRET", k) and v and \
                    not k.endswith("_FILE"):
                fail("compose puts a value for secret %s in the file" % k)

        # The validation is real: a misspelt condition is refused.
        with open(compose) as f:
            text = f.read()
        with open(compose, "w") as f:
            f.write(text.replace("service_healthy", "service_healty"))
        r = compose_config(d, compose)
        if r.returncode == 0:
            fail("docker-compose config accepted a broken depends_on")
    print("compose file validated with " + compose_bin)


# Each mutation of the real Dockerfile must be caught, so the lint is
# known to fail when it should.
MUTATIONS = [
    ("USER 10001:10001", "USER root"),
    ("USER 10001:10001", "USER 0"),
    ("FROM debian:12-slim AS builder", "FROM debian:12 AS builder"),
    ("\nFROM debian:12-slim\n", "\nFROM debian:latest\n"),
    ("    && rm -rf /var/lib/apt/lists/*\n", "\n"),
    ("HEALTHCHECK --interval", "# HEALTHCHECK --interval"),
    ("WORKDIR /src\n", "WORKDIR /src\nADD https://example.org/x.tgz /x\n"),
    ("WORKDIR /src\n", "WORKDIR /src\nENV OPENAI_API_KEY=abc\n"),
    ("bash scripts/install-deps.sh", "apt-get install -y cmake"),
    ("-DPARLEY_TESTS=OFF", ""),
    ("libuv1 libssl3", "libuv1-dev libssl3"),
    ("libuv1 libssl3", "libuv1 libssl3 no-such-package-parley"),
    ('CMD ["parley", "-c", "/etc/parley/bot.conf"]', 'CMD ["sh"]'),
]


def check_lint_catches():
    global fail_prefix
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        text = f.read()
    saved = failures[:]
    fail_prefix = "  caught: "
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "Dockerfile")
        for old, new in MUTATIONS:
            if old not in text:
                saved.append("mutation target %r not in Dockerfile" % old)
                continue
            with open(path, "w") as f:
                f.write(text.replace(old, new, 1))
            before = len(failures)
            print("mutation %r -> %r:" % (old.strip(), new.strip()))
            check_dockerfile(path)
            if len(failures) == before:
                saved.append("Dockerfile lint missed %r -> %r" % (old, new))
                print("FAIL: not caught")
    fail_prefix = "FAIL: "
    failures[:] = saved


def main():
    pkgs = check_dockerfile(os.path.join(DOCKER, "Dockerfile"))
    if not failures:
        check_lint_catches()
    check_binary_libraries(pkgs)
    compose_bin = shutil.which("docker-compose")
    if compose_bin:
        check_compose(compose_bin)
    if failures:
        print("%d docker check(s) failed" % len(failures))
        return 1
    if not compose_bin:
        print("SKIP: docker-compose is not installed "
              "(scripts/install-deps.sh --test installs it); "
              "the Dockerfile checks passed")
        return 77
    print("docker files OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
