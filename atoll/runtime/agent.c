/*
 * atoll-agent: PID 1 of every sandbox, and the fast path for running commands in it.
 *
 *   agent                  idle init: reaps orphans, ignores stray termination signals
 *   agent -- CMD ARGS...   runs CMD (the template's main process), forwards signals to it and
 *                          exits with its status, like catatonit
 *   agent --tcp PORT ...   the same, listening on 127.0.0.1:PORT instead of the socket file
 *
 * It listens on /.atoll/run/agent.sock (the sandbox's private tmpfs), or, in a gVisor sandbox,
 * whose user-space kernel the host cannot reach a socket file in, on the sandbox's own loopback,
 * which only runsc's port forwarding (through the sandbox's control socket) reaches from outside.
 * Atoll connects from the host (atoll/runtime/agent.py) and sends one request per connection; a
 * handler thread per connection starts the command (posix_spawn: a vfork and an exec) and
 * reports on it. That is all a command costs inside the sandbox, instead of a runtime process
 * (runc/crun/runsc exec) that has to re-create the sandbox's namespaces, cgroup, capabilities
 * and seccomp filter each time: the agent already holds all of them, and its children inherit
 * them. Commands are children of PID 1, so what they leave behind is too, which gVisor needs to
 * restore it from a checkpoint.
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
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
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
        /* the command's process group first, which a bomb's members keep unless they leave it:
         * one call reaches all of them at once, where the scan below takes a syscall per process
         * (slow enough under gVisor for a bomb to refill the limit while it runs) */
        kill(-sid, SIGKILL);
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
    int fd = open(RUN_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    /* gVisor's tmpfs has no O_TMPFILE: a named file, unlinked at once */
    char name[] = RUN_DIR "/spool.XXXXXX";
    fd = mkostemp(name, O_CLOEXEC);
    if (fd >= 0)
        unlink(name);
    return fd;
}

/* the spooled output, at most `cap` bytes of it */
static size_t spooled(int fd, size_t cap) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    return (size_t)st.st_size < cap ? (size_t)st.st_size : cap;
}

/* In a gVisor sandbox output goes out in chunks of `pace` bytes, each acknowledged by one byte
 * from Atoll before the next: runsc's port forwarding (20240729) reads the sandbox's side into a
 * 16 KiB buffer and panics, ending the whole sandbox, when more than that is waiting. 0: unpaced. */
static size_t pace;

static void send_file(int conn, int fd, size_t len) {
    char buf[65536];
    size_t chunk = pace ? pace : sizeof(buf);
    off_t off = 0;
    while (len > 0) {
        ssize_t n = pread(fd, buf, len < chunk ? len : chunk, off);
        if (n <= 0) { /* shrank meanwhile (truncated by a background process): pad */
            memset(buf, 0, sizeof(buf));
            n = (ssize_t)(len < chunk ? len : chunk);
        }
        if (write_all(conn, buf, (size_t)n) < 0)
            return;
        char ack = 0;
        while (pace && ack != 'A') /* (a late "K" is not one) */
            if (read(conn, &ack, 1) != 1)
                return;
        off += n;
        len -= (size_t)n;
    }
}

/* Commands are children of this process (started by handler threads); the main loop reaps every
 * child and hands a command's status to the thread waiting for it through that thread's pipe. The
 * table lock is held from spawning a command to recording it, so its status cannot be reaped
 * before anyone waits for it. */
#define MAX_RUNNING 4096
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    pid_t pid;
    int notify;
} running[MAX_RUNNING];

/* the main loop: a child ended; 1 when it was a command (its status went to its handler) */
static int hand_over(pid_t pid, int status) {
    for (int i = 0; i < MAX_RUNNING; i++) {
        if (running[i].pid == pid) {
            write_all(running[i].notify, &status, sizeof(status));
            running[i].pid = 0;
            return 1;
        }
    }
    return 0;
}

/* `argv0` as execvp would find it, along PATH from the command's own environment */
static int resolve(const char *argv0, char **env, char *path, size_t size) {
    if (strchr(argv0, '/') != NULL) {
        snprintf(path, size, "%s", argv0);
        return 0;
    }
    const char *search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char **kv = env; *kv != NULL; kv++)
        if (strncmp(*kv, "PATH=", 5) == 0)
            search = *kv + 5;
    int found_errno = ENOENT;
    for (const char *dir = search;; dir = strchr(dir, ':') + 1) {
        size_t len = strcspn(dir, ":");
        snprintf(path, size, "%.*s%s%s", (int)len, dir, len ? "/" : "", argv0);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(path, X_OK) == 0)
                return 0;
            found_errno = EACCES;
        }
        if (dir[len] == '\0')
            return found_errno;
    }
}

/* the agent's environment with the request's KEY=VALUE overrides applied */
static char **merged_environment(char **overrides) {
    size_t n = 0, extra = 0;
    while (environ[n] != NULL)
        n++;
    while (overrides[extra] != NULL)
        extra++;
    char **env = calloc(n + extra + 1, sizeof(char *));
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t key = strcspn(environ[i], "=");
        int replaced = 0;
        for (size_t j = 0; j < extra && !replaced; j++)
            replaced = strncmp(overrides[j], environ[i], key + 1) == 0;
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < extra; j++)
        env[k++] = overrides[j];
    return env;
}

/* Start the command as the leader of a new session, stdin /dev/null, output to the spools, with
 * default signal handling. posix_spawn shares this process's memory until the exec (vfork), so
 * a command costs the sandbox one new address space, not two: under gVisor that is most of the
 * cost of a command. Returns 0 or an errno; `notify` then reports its status. */
static int spawn(pid_t *pid, const char *cwd, const char *path, char **argv, char **env, int out, int err,
                 int notify) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out, 1);
    posix_spawn_file_actions_adddup2(&actions, err, 2);
    posix_spawn_file_actions_addchdir_np(&actions, cwd);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    pthread_mutex_lock(&table_lock);
    int slot = -1;
    for (int i = 0; i < MAX_RUNNING && slot < 0; i++)
        if (running[i].pid == 0)
            slot = i;
    int rc = slot < 0 ? EAGAIN : posix_spawn(pid, path, &actions, &attr, argv, env);
    if (rc == 0) {
        running[slot].pid = *pid;
        running[slot].notify = notify;
    }
    pthread_mutex_unlock(&table_lock);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return rc;
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
    if (payload == NULL || read_all(conn, payload, len) < 0) {
        free(payload);
        return;
    }
    payload[len] = '\0';
    /* split into strings */
    size_t count = 0;
    for (uint32_t i = 0; i < len; i++)
        count += payload[i] == '\0';
    char **fields = calloc(count + 2, sizeof(char *));
    char **argv = NULL, **env = NULL;
    int out = -1, err = -1, notify[2] = {-1, -1};
    if (fields == NULL || count < 3)
        goto done;
    size_t n = 0;
    for (char *p = payload; p < payload + len && n < count; p += strlen(p) + 1)
        fields[n++] = p;
    const char *cwd = fields[0];
    size_t cap = strtoull(fields[1], NULL, 10);
    size_t argc = strtoull(fields[2], NULL, 10);
    if (argc == 0 || 3 + argc > n)
        goto done;
    argv = calloc(argc + 1, sizeof(char *));
    if (argv == NULL)
        goto done;
    memcpy(argv, fields + 3, argc * sizeof(char *));
    env = merged_environment(fields + 3 + argc); /* NULL-terminated by calloc */
    if (env == NULL)
        goto done;

    struct stat st;
    if (stat(cwd, &st) < 0 || !S_ISDIR(st.st_mode)) {
        reply(conn, "E chdir %s: %s\n", cwd, strerror(S_ISDIR(st.st_mode) ? errno : ENOTDIR));
        goto done;
    }
    out = anonymous_file();
    err = anonymous_file();
    if (out < 0 || err < 0 || pipe2(notify, O_CLOEXEC) < 0) {
        reply(conn, "E spool: %s\n", strerror(errno));
        goto done;
    }
    char path[4096];
    int rc = resolve(argv[0], env, path, sizeof(path));
    pid_t child = 0;
    if (rc == 0)
        rc = spawn(&child, cwd, path, argv, env, out, err, notify[1]);
    int code, status = 0;
    if (rc == EAGAIN || rc == ENOMEM) {
        reply(conn, "E fork: %s\n", strerror(rc));
        goto done;
    }
    if (rc != 0) { /* as a shell reports a command it cannot run */
        reply(conn, "R 0\n");
        dprintf(err, "%s: %s\n", argv[0], strerror(rc));
        code = rc == ENOENT ? 127 : 126;
    } else {
        reply(conn, "R %d\n", (int)child);
        /* wait for the command, or for Atoll to ask for (or, by leaving, imply) a kill */
        int killed = 0;
        for (;;) {
            struct pollfd p[2] = {{.fd = notify[0], .events = POLLIN}, {.fd = conn, .events = POLLIN}};
            if (poll(p, killed ? 1 : 2, -1) < 0)
                continue;
            if (p[0].revents) {
                read_all(notify[0], &status, sizeof(status));
                break;
            }
            if (p[1].revents) {
                char byte;
                ssize_t got = read(conn, &byte, 1);
                kill_session(child);
                killed = 1;
                if (got <= 0) { /* Atoll is gone: nobody will collect the result */
                    read_all(notify[0], &status, sizeof(status));
                    goto done;
                }
            }
        }
        code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    size_t out_len = spooled(out, cap), err_len = spooled(err, cap);
    reply(conn, "X %d %zu %zu\n", code, out_len, err_len);
    send_file(conn, out, out_len);
    send_file(conn, err, err_len);
done:;
    int opened[] = {out, err, notify[0], notify[1]};
    for (size_t i = 0; i < sizeof(opened) / sizeof(opened[0]); i++)
        if (opened[i] >= 0)
            close(opened[i]);
    free(env);
    free(argv);
    free(fields);
    free(payload);
}

static void *handler_thread(void *arg) {
    int conn = (int)(intptr_t)arg;
    handle(conn);
    close(conn);
    return NULL;
}

static int listen_loopback(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 256) < 0) {
        close(fd);
        return -1;
    }
    return fd;
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
    int tcp_port = 0;
    if (argc > 2 && strcmp(argv[1], "--tcp") == 0) {
        tcp_port = atoi(argv[2]);
        pace = 8192;
        argv += 2;
        argc -= 2;
    }
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
    umask(022);

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

    pthread_attr_t handler_attr;
    pthread_attr_init(&handler_attr);
    pthread_attr_setdetachstate(&handler_attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&handler_attr, 256 << 10);
    int listener = tcp_port > 0 ? listen_loopback(tcp_port) : listen_socket();
    if (listener < 0)
        dprintf(2, "atoll-agent: cannot listen: %s (no commands through the agent)\n", strerror(errno));
    for (;;) {
        int status;
        pid_t gone;
        pthread_mutex_lock(&table_lock);
        while ((gone = waitpid(-1, &status, WNOHANG)) > 0) {
            if (gone == main_pid)
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            hand_over(gone, status); /* or an orphan, reaped and done with */
        }
        pthread_mutex_unlock(&table_lock);
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
        /* a thread per connection (it shares the signal mask above: every signal stays with
         * this loop); it waits for its command, so commands run concurrently */
        pthread_t handler;
        int rc = pthread_create(&handler, &handler_attr, handler_thread, (void *)(intptr_t)conn);
        if (rc != 0) {
            /* the process limit is used up (e.g. by a fork bomb): reported like any command
             * that could not start, which Atoll answers with "try again later" */
            reply(conn, "E fork: %s\n", strerror(rc));
            close(conn);
        }
    }
}
