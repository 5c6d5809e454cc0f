/*
 * Helpers for C tests that need a real server beside them (redis-server,
 * the OpenAI stand-in): find a free loopback port, start a child process
 * with its output in a log file, wait until it accepts connections, and
 * stop it.  Header-only (static functions) so every test_*.c can include
 * it without a library of its own.
 */
#ifndef PARLEY_TEST_SPAWN_H
#define PARLEY_TEST_SPAWN_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A port the kernel considers free right now on 127.0.0.1 (a small race
 * with other processes is accepted in tests). Returns -1 on failure. */
static inline int spawn_free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Start argv[0] (a path) with stdout/stderr appended to log_path (or
 * /dev/null).  Returns the pid or -1. */
static inline pid_t spawn_process(char *const argv[], const char *log_path)
{
    pid_t pid = fork();

    if (pid != 0)
        return pid;
    int fd = open(log_path ? log_path : "/dev/null",
                  O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    setpgid(0, 0);
    /* A test that dies without its teardown (an ASan abort, a timeout
     * kill) must not leave servers behind: they die with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execv(argv[0], argv);
    _exit(127);
}

/* Wait until 127.0.0.1:port accepts a TCP connection. 0 or -1. */
static inline int spawn_wait_port(int port, int timeout_ms)
{
    struct timespec pause = { 0, 20 * 1000 * 1000 };

    for (int waited = 0; waited < timeout_ms; waited += 20) {
        struct sockaddr_in sa;
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        if (fd < 0)
            return -1;
        memset(&sa, 0, sizeof(sa));
        sa.sin_family = AF_INET;
        sa.sin_port = htons((unsigned short)port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(fd);
            return 0;
        }
        close(fd);
        nanosleep(&pause, NULL);
    }
    return -1;
}

/* SIGTERM, then SIGKILL after 2 s; reaps the child. */
static inline void spawn_stop(pid_t pid)
{
    struct timespec pause = { 0, 20 * 1000 * 1000 };

    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        nanosleep(&pause, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/*
 * ctest's SKIP_RETURN_CODE for unit programs (tests/CMakeLists.txt).  A
 * server a test needs that is not installed must show as skipped, never
 * as passed: spawn_require() exits with it before any test runs, and a
 * program whose cases skip one by one (some need the server, some not)
 * returns spawn_status() from main, which is SPAWN_SKIP when nothing
 * failed but something was skipped for a missing program.
 */
#define SPAWN_SKIP 77

static int spawn_missing;

static inline void spawn_require(const char *path)
{
    if (access(path, X_OK) != 0) {
        fprintf(stderr, "%s is not installed: skipping\n", path);
        exit(SPAWN_SKIP);
    }
}

/* 1 when path can be run; otherwise notes the skip for spawn_status(). */
static inline int spawn_have(const char *path)
{
    if (access(path, X_OK) == 0)
        return 1;
    spawn_missing++;
    return 0;
}

/* main's exit status from cmocka's count of failed tests. */
static inline int spawn_status(int failed)
{
    if (failed != 0)
        return failed;
    if (spawn_missing != 0)
        fprintf(stderr, "some cases skipped: a server is not installed\n");
    return spawn_missing != 0 ? SPAWN_SKIP : 0;
}

/* redis-server on port with no persistence; dir for its files. */
static inline pid_t spawn_redis(int port, const char *dir)
{
    char portbuf[16];
    char *argv[] = { "/usr/bin/redis-server", "--port", portbuf,
                     "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", (char *)dir, NULL };
    pid_t pid;

    snprintf(portbuf, sizeof(portbuf), "%d", port);
    pid = spawn_process(argv, NULL);
    if (pid > 0 && spawn_wait_port(port, 5000) != 0) {
        spawn_stop(pid);
        return -1;
    }
    return pid;
}

/*
 * The OpenAI stand-in (tests/integration/openai_stub.py, found through
 * PARLEY_TEST_DATA) on a free port it picks and writes to dir/stub.port;
 * extra arguments (NULL-terminated, may be NULL) are passed on, and its
 * output goes to log_path (or /dev/null).  *port is set once it accepts
 * connections.  Returns the pid, or -1 (nothing left running).
 */
static inline pid_t spawn_openai_stub(const char *dir, char *const extra[],
                                      const char *log_path, int *port)
{
    char portfile[256], script[512];
    const char *data = getenv("PARLEY_TEST_DATA");
    char *argv[16] = { "/usr/bin/python3", script, "--port-file",
                       portfile };
    size_t n = 4;
    pid_t pid;

    *port = 0;
    snprintf(portfile, sizeof(portfile), "%s/stub.port", dir);
    snprintf(script, sizeof(script), "%s/integration/openai_stub.py",
             data ? data : "tests");
    for (size_t i = 0; extra && extra[i] && n + 1 < 16; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid = spawn_process(argv, log_path);
    if (pid < 0)
        return -1;
    for (int i = 0; i < 500 && *port <= 0; i++) {
        FILE *pf = fopen(portfile, "r");
        struct timespec pause = { 0, 10 * 1000 * 1000 };

        if (pf) {
            if (fscanf(pf, "%d", port) != 1)
                *port = 0;
            fclose(pf);
        }
        if (*port <= 0)
            nanosleep(&pause, NULL);
    }
    if (*port <= 0 || spawn_wait_port(*port, 5000) != 0) {
        spawn_stop(pid);
        *port = 0;
        return -1;
    }
    return pid;
}

#endif
