/*
 * replay_main: a main() for fuzz targets built without libFuzzer. It
 * feeds every regular file of one corpus directory to
 * LLVMFuzzerTestOneInput() once, so plain gcc builds and ctest exercise
 * the parsers on the seeds and on any crash file saved into the corpus.
 * It owns nothing else; it must never skip a file silently or fail
 * because a corpus is missing (a new target may have no seeds yet).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file; returned owned (free()), NULL on error. */
static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL, *exact;
    size_t cap = 0, len = 0;

    if (!f)
        return NULL;
    for (;;) {
        size_t n;
        if (len == cap) {
            uint8_t *nb;
            cap = cap ? cap * 2 : 4096;
            nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    /* A buffer of exactly len bytes, so that ASan catches reads past the
     * input as it does under libFuzzer. */
    exact = malloc(len ? len : 1);
    if (exact && len)
        memcpy(exact, buf, len);
    free(buf);
    *size = len;
    return exact;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    const char *dir_path = argc > 1 ? argv[1] : NULL;
    char **names = NULL;
    size_t nnames = 0, ran = 0;
    struct dirent *de;
    int rc = 0;
    DIR *dir;

    if (!dir_path) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 0;
    }
    dir = opendir(dir_path);
    if (!dir) {
        printf("replay: corpus %s not found; nothing to run\n", dir_path);
        return 0;
    }
    while ((de = readdir(dir))) {
        char **nn;
        if (de->d_name[0] == '.')
            continue;
        nn = realloc(names, (nnames + 1) * sizeof(*names));
        if (!nn) {
            rc = 1;
            break;
        }
        names = nn;
        names[nnames] = strdup(de->d_name);
        if (!names[nnames]) {
            rc = 1;
            break;
        }
        nnames++;
    }
    closedir(dir);
    /* A stable order makes a failure reproducible from the log. */
    if (nnames)
        qsort(names, nnames, sizeof(*names), by_name);

    for (size_t i = 0; i < nnames && rc == 0; i++) {
        size_t plen = strlen(dir_path) + strlen(names[i]) + 2;
        char *path = malloc(plen);
        struct stat st;
        uint8_t *data;
        size_t size = 0;

        if (!path) {
            rc = 1;
            break;
        }
        snprintf(path, plen, "%s/%s", dir_path, names[i]);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            continue;
        }
        data = read_file(path, &size);
        if (!data) {
            fprintf(stderr, "replay: cannot read %s\n", path);
            free(path);
            rc = 1;
            break;
        }
        LLVMFuzzerTestOneInput(data, size);
        free(data);
        free(path);
        ran++;
    }
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    if (ran == 0 && rc == 0)
        printf("replay: corpus %s is empty; nothing to run\n", dir_path);
    else
        printf("replay: %zu file(s) from %s ran\n", ran, dir_path);
    return rc;
}
