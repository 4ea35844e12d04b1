/* Freeze/thaw hooks: a configured command run around a snapshot, without a shell.
 *
 * The command was split into words when the configuration was loaded (core/argv.h); the VM ID
 * is appended as one more argument, so whatever a VM is called it reaches the hook as exactly
 * one argument and is never interpreted.  The hook gets a minimal environment (PATH,
 * VMEXPORT_VM_ID, VMEXPORT_HOOK), stdin from /dev/null, the daemon's stdout and stderr, and no
 * other descriptor: every descriptor of the daemon is close-on-exec, and the child closes
 * everything above 2 before execve as well (a library may have opened one without the flag).
 * Signals blocked or ignored by the daemon are reset.  The hook runs in a process group of its
 * own, killed as a whole at the timeout, so that a script's children go with it.
 *
 * Between fork and execve the child only makes async-signal-safe calls: the daemon has many
 * threads, and one of them may hold a lock (malloc's, say) at the moment of the fork.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/clock.h"
#include "core/log.h"
#include "server/server.h"

/* The whole environment of a hook, besides VMEXPORT_VM_ID and VMEXPORT_HOOK. */
#define HOOK_PATH "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
/* How often a running hook is checked for its end or its timeout. */
#define HOOK_POLL_NS (10 * 1000 * 1000)
/* Exit status of a child whose execve failed, as a shell reports a missing command. */
#define HOOK_EXEC_FAILED 127

static int64_t monotonic_ns(void)
{
    return clock_monotonic_ns();
}

/* Close every descriptor above 2; close_range where the kernel has it (5.9). */
static void close_from_3(void)
{
    if (close_range(3, ~0U, 0) == 0)
        return;
    struct rlimit rl;
    int max =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1048576 ? (int)rl.rlim_cur : 65536;
    for (int fd = 3; fd < max; fd++)
        close(fd);
}

/* The child's side: never returns. */
static void __attribute__((noreturn)) hook_exec(char *const argv[], char *const envp[], int devnull)
{
    sigset_t none;
    sigemptyset(&none);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* fails harmlessly for SIGKILL, SIGSTOP, glibc's own */
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    if (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0)
        _exit(HOOK_EXEC_FAILED);
    close_from_3();
    execve(argv[0], argv, envp);
    _exit(HOOK_EXEC_FAILED);
}

int hook_run(char *const *cmd, const char *vm_id, const char *what, unsigned timeout_s)
{
    if (!cmd)
        return 0;
    size_t n = 0;
    while (cmd[n])
        n++;
    /* Everything the child needs, made before the fork. */
    CLEANUP_FREE char **argv = calloc(n + 2, sizeof(*argv));
    CLEANUP_FREE char *env_id = NULL, *env_hook = NULL;
    if (asprintf(&env_id, "VMEXPORT_VM_ID=%s", vm_id) < 0)
        env_id = NULL;
    if (asprintf(&env_hook, "VMEXPORT_HOOK=%s", what) < 0)
        env_hook = NULL;
    if (!argv || !env_id || !env_hook)
        return -ENOMEM;
    memcpy(argv, cmd, n * sizeof(*argv));
    argv[n] = (char *)vm_id;
    char *envp[] = {HOOK_PATH, env_id, env_hook, NULL};
    CLEANUP_CLOSE int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0)
        return -errno;

    int64_t t0 = monotonic_ns();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0)
        hook_exec(argv, envp, devnull);
    setpgid(pid, pid); /* also here: no window in which a kill of the group misses it */

    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            return -errno;
        if (monotonic_ns() - t0 >= (int64_t)timeout_s * 1000000000) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            log_error("%s command for VM %s timed out after %u s; killed", what, vm_id, timeout_s);
            return -ETIMEDOUT;
        }
        struct timespec step = {0, HOOK_POLL_NS};
        nanosleep(&step, NULL);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == HOOK_EXEC_FAILED)
        log_error("%s command for VM %s: %s exited 127 (could not be run?)", what, vm_id, cmd[0]);
    else if (WIFEXITED(status))
        log_error("%s command for VM %s failed (exit status %d)", what, vm_id, WEXITSTATUS(status));
    else
        log_error("%s command for VM %s killed by signal %d", what, vm_id,
                  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return -ECANCELED;
}
