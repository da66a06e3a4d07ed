/*
 * log: see log.h. Owns the log file descriptor; writes each line with a
 * single write() so lines from a crash or from libstrophe never interleave.
 * Never allocates on the hot path beyond one line buffer on the stack.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int g_level = L_INFO;
static bool g_json;
static int g_fd = 2;
static char g_path[512];

static const char *const names[] = {
    [L_ERR] = "error", [L_WARNING] = "warning", [L_NOTICE] = "notice",
    [L_INFO] = "info", [L_DEBUG] = "debug",
};

int log_level_parse(const char *name)
{
    for (int i = L_ERR; i <= L_DEBUG; i++)
        if (strcasecmp(name, names[i]) == 0)
            return i;
    if (strcasecmp(name, "warn") == 0)
        return L_WARNING;
    return -1;
}

const char *log_level_name(int level)
{
    if (level < L_ERR)
        level = L_ERR;
    if (level > L_DEBUG)
        level = L_DEBUG;
    return names[level];
}

static int open_path(const char *path, struct error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "cannot open log file %s: %s", path, strerror(errno));
    return fd;
}

int log_init(int level, bool json, const char *path, struct error *err)
{
    g_level = level;
    g_json = json;
    if (path && *path) {
        int fd = open_path(path, err);
        if (fd < 0)
            return -1;
        if (g_fd > 2)
            close(g_fd);
        g_fd = fd;
        snprintf(g_path, sizeof(g_path), "%s", path);
    }
    return 0;
}

void log_set_level(int level)
{
    g_level = level;
}

bool log_enabled(int level)
{
    return level <= g_level;
}

void log_reopen(void)
{
    if (!g_path[0])
        return;
    int fd = open_path(g_path, NULL);
    if (fd < 0)
        return;
    int old = g_fd;
    g_fd = fd;
    if (old > 2)
        close(old);
}

void log_close(void)
{
    if (g_fd > 2)
        close(g_fd);
    g_fd = 2;
    g_path[0] = '\0';
}

void log_write(int level, const char *module, const char *fmt, ...)
{
    char msg[2048], line[4096 + 64], ts[40];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    if (!log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* one event, one line: a CR or LF from input never splits a line */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = (int)strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - (size_t)n, ".%03dZ",
             (int)(tv.tv_usec / 1000));

    if (g_json) {
        /* one JSON object per line, never cut: built whole, one write */
        struct strbuf b;
        sb_init(&b);
        sb_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":", ts,
                  log_level_name(level));
        json_quote(&b, module ? module : "postern");
        sb_puts(&b, ",\"msg\":");
        json_quote(&b, msg);
        sb_puts(&b, "}\n");
        ssize_t w = write(g_fd, b.s, b.len);
        (void)w;
        sb_free(&b);
        return;
    }
    n = snprintf(line, sizeof(line), "%s %-7s %s: %s\n", ts,
                 log_level_name(level), module ? module : "postern", msg);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line)) {
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(g_fd, line, (size_t)n);
    (void)w;
}

const char *log_mask(const char *addr, char *buf, size_t size)
{
    if (!size)
        return buf;
    if (!addr) {
        snprintf(buf, size, "(none)");
        return buf;
    }
    const char *at = strchr(addr, '@');
    size_t len = strlen(addr);
    if (at) {
        snprintf(buf, size, "%.1s***%s", addr, at);
    } else if (len > 7) {
        snprintf(buf, size, "%.5s***%s", addr, addr + len - 2);
    } else {
        snprintf(buf, size, "***");
    }
    return buf;
}
