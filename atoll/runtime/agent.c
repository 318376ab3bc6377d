/*
 * atoll-agent: PID 1 of an OCI sandbox, and the fast path for running commands in it.
 *
 *   agent                  idle init: reaps orphans, ignores stray termination signals
 *   agent -- CMD ARGS...   runs CMD (the template's main process), forwards signals to it and
 *                          exits with its status, like catatonit
 *
 * Either way it listens on /.atoll/run/agent.sock (the sandbox's private tmpfs). Atoll connects
 * from the host (atoll/runtime/agent.py) and sends one request per connection; a handler process
 * forked per connection starts the command and reports on it. Starting a command this way costs
 * two forks and an exec inside the sandbox, instead of a runtime process (runc/crun exec) that
 * has to re-create the sandbox's namespaces, cgroup, capabilities and seccomp filter each time:
 * the agent already holds all of them, and its children inherit them.
 *
 * Wire (all integers in decimal text, lines end with \n):
 *   request:  "ATL1" u32le(length) then length bytes of NUL-terminated strings:
 *             cwd, max_output_bytes, argc, argv[0..argc), then "KEY=VALUE" env overrides
 *   reply:    "R pid\n"                 the command started (pid in the sandbox)
 *             "E message\n"             it could not start (e.g. chdir failed); nothing ran
 *   then:     "X status outlen errlen\n" followed by outlen + errlen bytes of output
 *   Atoll may send "K" (or close the connection) while the command runs: its whole session is
 *   killed, then the reply goes on as above.
 *
 * The command leads a new session; its stdout and stderr are anonymous files on the tmpfs
 * (charged to the sandbox's memory cgroup), copied to Atoll once it exits. What it leaves
 * running in the background holds no descriptor leading out of the sandbox, so the call returns
 * when the command ends and the sandbox stays checkpointable. Everything here runs inside the
 * sandbox with its privileges only: Atoll treats every byte it receives as untrusted.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define RUN_DIR "/.atoll/run"
#define SOCKET_PATH RUN_DIR "/agent.sock"
#define MAX_REQUEST (8u << 20)
#define KILL_ROUNDS 3000 /* scans; with 1 ms pauses once only zombies are left */

extern char **environ;

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
#define N_FORWARDED (sizeof(forwarded) / sizeof(forwarded[0]))

static volatile sig_atomic_t pending[65];
static volatile sig_atomic_t child_changed;

static void on_signal(int sig) {
    if (sig == SIGCHLD)
        child_changed = 1;
    else if (sig > 0 && sig < 65)
        pending[sig] = 1;
}

static void catch(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* the signal state a command starts with: nothing blocked, nothing caught */
static void default_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < 65; sig++)
        signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* the whole of `len` bytes through read(2) or write(2), retrying short transfers */
static int transfer_all(ssize_t (*op)(int, void *, size_t), int fd, void *data, size_t len) {
    char *p = data;
    while (len > 0) {
        ssize_t n = op(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static ssize_t write_op(int fd, void *data, size_t len) { return write(fd, data, len); }
static int write_all(int fd, const void *data, size_t len) { return transfer_all(write_op, fd, (void *)data, len); }
static int read_all(int fd, void *data, size_t len) { return transfer_all(read, fd, data, len); }

static void reply(int conn, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0)
        write_all(conn, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* SIGKILL every process of session `sid`, again and again until a scan finds none: a fork bomb
 * keeps forking while it is being killed. Killed members stay in the pids cgroup as zombies until
 * PID 1 reaps them, so the scan also waits (briefly) for those: the next command then finds room.
 * Uses no fork itself, so it works when the sandbox's process limit is used up. */
static void kill_session(pid_t sid) {
    for (int round = 0; round < KILL_ROUNDS; round++) {
        int live = 0, zombies = 0;
        DIR *proc = opendir("/proc");
        if (proc == NULL)
            return;
        struct dirent *entry;
        while ((entry = readdir(proc)) != NULL) {
            if (entry->d_name[0] < '0' || entry->d_name[0] > '9')
                continue;
            char path[300], stat[512];
            snprintf(path, sizeof(path), "/proc/%s/stat", entry->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            ssize_t n = read(fd, stat, sizeof(stat) - 1);
            close(fd);
            if (n <= 0)
                continue;
            stat[n] = '\0';
            char *end = strrchr(stat, ')'); /* comm may contain anything, even ") " */
            int ppid, pgrp, session;
            char state;
            if (end == NULL || sscanf(end + 2, "%c %d %d %d", &state, &ppid, &pgrp, &session) != 4)
                continue;
            if (session != sid)
                continue;
            if (state == 'Z') {
                zombies |= atoi(entry->d_name) != sid; /* the leader is ours to reap, after this */
            } else {
                kill(atoi(entry->d_name), SIGKILL);
                live = 1;
            }
        }
        closedir(proc);
        if (!live && !zombies)
            return;
        if (!live) /* only zombies left: give PID 1 a moment to reap them */
            usleep(1000);
    }
}

static int anonymous_file(void) {
    return open(RUN_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

/* the spooled output, at most `cap` bytes of it */
static size_t spooled(int fd, size_t cap) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    return (size_t)st.st_size < cap ? (size_t)st.st_size : cap;
}

static void send_file(int conn, int fd, size_t len) {
    char buf[65536];
    off_t off = 0;
    while (len > 0) {
        ssize_t n = pread(fd, buf, len < sizeof(buf) ? len : sizeof(buf), off);
        if (n <= 0) { /* shrank meanwhile (truncated by a background process): pad */
            memset(buf, 0, sizeof(buf));
            n = (ssize_t)(len < sizeof(buf) ? len : sizeof(buf));
        }
        if (write_all(conn, buf, (size_t)n) < 0)
            return;
        off += n;
        len -= (size_t)n;
    }
}

/* the child: becomes the command */
static void start_command(const char *cwd, char **argv, char **env, int out, int err, int status_pipe) {
    default_signals();
    setsid();
    if (chdir(cwd) < 0) {
        int e = errno;
        write_all(status_pipe, &e, sizeof(e));
        _exit(127);
    }
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    if (null > 2)
        close(null);
    for (char **kv = env; *kv != NULL; kv++)
        putenv(*kv);
    umask(022);
    execvp(argv[0], argv);
    int e = errno;
    dprintf(2, "%s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

/* one connection: parse the request, run the command, report */
static void handle(int conn) {
    char header[8];
    if (read_all(conn, header, sizeof(header)) < 0 || memcmp(header, "ATL1", 4) != 0)
        return;
    uint32_t len = (uint32_t)(unsigned char)header[4] | (uint32_t)(unsigned char)header[5] << 8 |
                   (uint32_t)(unsigned char)header[6] << 16 | (uint32_t)(unsigned char)header[7] << 24;
    if (len == 0 || len > MAX_REQUEST)
        return;
    char *payload = malloc(len + 1);
    if (payload == NULL || read_all(conn, payload, len) < 0)
        return;
    payload[len] = '\0';
    /* split into strings */
    size_t count = 0;
    for (uint32_t i = 0; i < len; i++)
        count += payload[i] == '\0';
    char **fields = calloc(count + 2, sizeof(char *));
    if (fields == NULL || count < 3)
        return;
    size_t n = 0;
    for (char *p = payload; p < payload + len && n < count; p += strlen(p) + 1)
        fields[n++] = p;
    const char *cwd = fields[0];
    size_t cap = strtoull(fields[1], NULL, 10);
    size_t argc = strtoull(fields[2], NULL, 10);
    if (argc == 0 || 3 + argc > n)
        return;
    char **argv = calloc(argc + 1, sizeof(char *));
    if (argv == NULL)
        return;
    memcpy(argv, fields + 3, argc * sizeof(char *));
    char **env = fields + 3 + argc; /* NULL-terminated by calloc */

    int out = anonymous_file(), err = anonymous_file(), status_pipe[2];
    if (out < 0 || err < 0 || pipe2(status_pipe, O_CLOEXEC) < 0) {
        reply(conn, "E spool: %s\n", strerror(errno));
        return;
    }
    pid_t child = fork();
    if (child < 0) {
        reply(conn, "E fork: %s\n", strerror(errno));
        return;
    }
    if (child == 0)
        start_command(cwd, argv, env, out, err, status_pipe[1]);
    close(status_pipe[1]);
    int start_errno = 0;
    if (read_all(status_pipe[0], &start_errno, sizeof(start_errno)) == 0) {
        waitpid(child, NULL, 0);
        reply(conn, "E chdir %s: %s\n", cwd, strerror(start_errno));
        return;
    }
    close(status_pipe[0]);
    reply(conn, "R %d\n", (int)child);

    /* wait for the command, or for Atoll to ask for (or, by leaving, imply) a kill */
    sigset_t during_poll;
    sigprocmask(SIG_SETMASK, NULL, &during_poll);
    sigdelset(&during_poll, SIGCHLD);
    int status = 0, killed = 0;
    for (;;) {
        pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child)
            break;
        struct pollfd p = {.fd = conn, .events = POLLIN};
        child_changed = 0;
        int ready = ppoll(&p, 1, NULL, &during_poll);
        if (ready > 0 && !killed) {
            char byte;
            ssize_t got = read(conn, &byte, 1);
            if (got <= 0) { /* Atoll is gone: nobody will collect the result */
                kill_session(child);
                waitpid(child, &status, 0);
                return;
            }
            kill_session(child);
            killed = 1;
        } else if (ready > 0) {
            /* after a kill only the command's exit matters; avoid spinning on an EOF */
            waitpid(child, &status, 0);
            break;
        }
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    size_t out_len = spooled(out, cap), err_len = spooled(err, cap);
    reply(conn, "X %d %zu %zu\n", code, out_len, err_len);
    send_file(conn, out, out_len);
    send_file(conn, err, err_len);
}

static int listen_socket(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, SOCKET_PATH, sizeof(addr.sun_path) - 1);
    unlink(SOCKET_PATH);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || chmod(SOCKET_PATH, 0600) < 0 ||
        listen(fd, 256) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    char **main_command = NULL;
    if (argc > 2 && strcmp(argv[1], "--") == 0)
        main_command = argv + 2;

    /* signals reach us only inside ppoll, where the loop below handles them */
    sigset_t blocked, during_poll;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    for (size_t i = 0; i < N_FORWARDED; i++)
        sigaddset(&blocked, forwarded[i]);
    sigprocmask(SIG_BLOCK, &blocked, &during_poll);
    catch(SIGCHLD);
    for (size_t i = 0; i < N_FORWARDED; i++)
        catch(forwarded[i]);
    signal(SIGPIPE, SIG_IGN);

    pid_t main_pid = -1;
    if (main_command != NULL) {
        main_pid = fork();
        if (main_pid == 0) {
            default_signals();
            execvp(main_command[0], main_command);
            dprintf(2, "atoll-agent: %s: %s\n", main_command[0], strerror(errno));
            _exit(errno == ENOENT ? 127 : 126);
        }
        if (main_pid < 0) {
            dprintf(2, "atoll-agent: fork: %s\n", strerror(errno));
            return 1;
        }
    }

    int listener = listen_socket();
    if (listener < 0)
        dprintf(2, "atoll-agent: %s: %s (commands fall back to the runtime's exec)\n", SOCKET_PATH,
                strerror(errno));
    for (;;) {
        int status;
        pid_t gone;
        while ((gone = waitpid(-1, &status, WNOHANG)) > 0) {
            if (gone == main_pid)
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        for (size_t i = 0; i < N_FORWARDED; i++) {
            int sig = forwarded[i];
            if (!pending[sig])
                continue;
            pending[sig] = 0;
            if (main_pid > 0)
                kill(main_pid, sig);
        }
        struct pollfd p = {.fd = listener, .events = POLLIN};
        int ready = ppoll(&p, listener >= 0 ? 1 : 0, NULL, &during_poll);
        if (ready <= 0 || !(p.revents & POLLIN))
            continue;
        int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0)
            continue;
        pid_t handler = fork();
        if (handler == 0) {
            close(listener);
            /* SIGCHLD stays blocked outside ppoll, as in the init */
            for (size_t i = 0; i < N_FORWARDED; i++)
                signal(forwarded[i], SIG_DFL);
            sigset_t only_chld;
            sigemptyset(&only_chld);
            sigaddset(&only_chld, SIGCHLD);
            sigprocmask(SIG_SETMASK, &only_chld, NULL);
            handle(conn);
            _exit(0);
        }
        /* a fork that fails (the process limit is used up) closes the connection unanswered,
         * and Atoll falls back to the runtime's exec */
        close(conn);
    }
}
