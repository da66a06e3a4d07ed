/*
 * curl_ceiling: the raw libcurl multi keep-alive POST ceiling against one
 * URL, so SMS benchmark figures can be judged against what curl alone
 * manages on the same machine and server.
 *
 * Usage: curl_ceiling URL [N [C [BODY]]]
 *   N     requests in total (default 10000)
 *   C     requests in flight and connections to the host (default 16)
 *   BODY  POST body (default a Twilio-shaped form)
 *
 * Prints one line: requests, seconds, req/s, 2xx count, other statuses,
 * transport errors. Standalone on purpose: no postern code, a plain
 * curl_multi_poll() loop, one easy handle per slot re-added after each
 * completion so connections stay alive. Exits 1 if any request failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

static size_t discard(char *data, size_t size, size_t nmemb, void *userp)
{
    (void)data;
    (void)userp;
    return size * nmemb;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static CURL *make_easy(const char *url, const char *body,
                       struct curl_slist *hdrs)
{
    CURL *e = curl_easy_init();

    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "postern-curl-ceiling");
    return e;
}

int main(int argc, char **argv)
{
    const char *url;
    long n = 10000, c = 16;
    const char *body = "To=%2B15551234567&From=%2B15005550006&Body=hello";
    struct curl_slist *hdrs = NULL;
    CURLM *multi;
    CURL **easies;
    long started = 0, finished = 0, ok = 0, other = 0, errors = 0;
    double t0, dt;
    int running = 0;

    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: %s URL [N [C [BODY]]]\n", argv[0]);
        return 2;
    }
    url = argv[1];
    if (argc > 2)
        n = strtol(argv[2], NULL, 10);
    if (argc > 3)
        c = strtol(argv[3], NULL, 10);
    if (argc > 4)
        body = argv[4];
    if (n < 1 || c < 1) {
        fprintf(stderr, "N and C must be positive\n");
        return 2;
    }
    if (c > n)
        c = n;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    hdrs = curl_slist_append(hdrs,
                             "Content-Type: application/x-www-form-urlencoded");
    hdrs = curl_slist_append(hdrs, "Expect:");
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, c);
    easies = calloc((size_t)c, sizeof(*easies));
    if (!hdrs || !multi || !easies) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    t0 = now_s();
    for (long i = 0; i < c; i++) {
        easies[i] = make_easy(url, body, hdrs);
        if (!easies[i]) {
            fprintf(stderr, "curl_easy_init failed\n");
            return 1;
        }
        curl_multi_add_handle(multi, easies[i]);
        started++;
    }
    while (finished < n) {
        CURLMsg *m;
        int left;

        curl_multi_perform(multi, &running);
        while ((m = curl_multi_info_read(multi, &left))) {
            CURL *e = m->easy_handle;
            long status = 0;

            if (m->msg != CURLMSG_DONE)
                continue;
            if (m->data.result == CURLE_OK) {
                curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
                if (status >= 200 && status < 300)
                    ok++;
                else
                    other++;
            } else if (errors++ == 0) {
                fprintf(stderr, "first error: %s\n",
                        curl_easy_strerror(m->data.result));
            }
            finished++;
            curl_multi_remove_handle(multi, e);
            if (started < n) {
                curl_multi_add_handle(multi, e); /* same handle: keep-alive */
                started++;
            }
        }
        if (finished < n)
            curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    dt = now_s() - t0;

    printf("requests=%ld concurrency=%ld seconds=%.3f req_per_s=%.0f "
           "2xx=%ld other_status=%ld errors=%ld\n",
           n, c, dt, (double)n / dt, ok, other, errors);

    for (long i = 0; i < c; i++)
        curl_easy_cleanup(easies[i]);
    free(easies);
    curl_multi_cleanup(multi);
    curl_slist_free_all(hdrs);
    curl_global_cleanup();
    return errors || other ? 1 : 0;
}
