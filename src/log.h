/*
 * log: one line per event on stderr (or a file reopened on SIGHUP), in
 * text or JSON. Every line names its module or gateway. Callers never
 * pass secrets; message bodies only at L_DEBUG; phone numbers and
 * addresses go through log_mask() at info and above.
 */
#ifndef POSTERN_LOG_H
#define POSTERN_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

enum log_level { /* syslog numbering */
                 L_ERR = 3,
                 L_WARNING = 4,
                 L_NOTICE = 5,
                 L_INFO = 6,
                 L_DEBUG = 7,
};

/* "error", "warning", "notice", "info", "debug" -> level; -1 if unknown. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

/*
 * path NULL or "" logs to stderr. Returns -1 with err filled when the file
 * cannot be opened (the previous destination stays).
 */
int log_init(int level, bool json, const char *path, struct error *err);
void log_set_level(int level);
bool log_enabled(int level);
/* Reopens the log file (SIGHUP, after logrotate). No-op for stderr. */
void log_reopen(void);
void log_close(void);

void log_write(int level, const char *module, const char *fmt, ...)
    PRINTF_LIKE(3, 4);

/*
 * Masks the middle of an address for info-level logs:
 * "+15551234567" -> "+1555***67", "bob@example.com" -> "b***@example.com".
 * Writes into buf (always NUL-terminated) and returns it.
 */
const char *log_mask(const char *addr, char *buf, size_t size);

#define log_err(mod, ...) log_write(L_ERR, mod, __VA_ARGS__)
#define log_warn(mod, ...) log_write(L_WARNING, mod, __VA_ARGS__)
#define log_notice(mod, ...) log_write(L_NOTICE, mod, __VA_ARGS__)
#define log_info(mod, ...) log_write(L_INFO, mod, __VA_ARGS__)
#define log_debug(mod, ...)                                                    \
    do {                                                                       \
        if (log_enabled(L_DEBUG))                                              \
            log_write(L_DEBUG, mod, __VA_ARGS__);                              \
    } while (0)

#endif
