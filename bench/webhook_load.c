/*
 * webhook_load: see webhook_load.h. Owns one CURLM, one easy handle per
 * slot (re-added after each completion so connections stay alive, as in
 * curl_ceiling.c) and each slot's body and header list.
 *
 * The same client drives postern's /sms/<jid>/inbound and the raw evhttp
 * ceiling, so the two figures differ only by the server. Bodies and
 * signatures are built per request (an HMAC costs about a microsecond);
 * nothing is logged per request.
 */
#include "webhook_load.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "bench.h"

#define MAX_PARAMS 16
#define BODY_MAX 2048
#define N_PARAMS 11 /* the webhook's parameters, below */

struct slot {
    CURL *easy;
    struct curl_slist *hdrs;
    char body[BODY_MAX];
    size_t seq;
};

static size_t discard(char *data, size_t size, size_t nmemb, void *userp)
{
    (void)data;
    (void)userp;
    return size * nmemb;
}

struct pair {
    const char *name, *value;
};

static int pair_cmp(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    return c ? c : strcmp(x->value, y->value);
}

int webhook_twilio_sign(const char *token, const char *url,
                        const char *const *names, const char *const *values,
                        size_t n, char *out, size_t size)
{
    struct pair p[MAX_PARAMS];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char data[4 * BODY_MAX];
    size_t len;

    if (n > MAX_PARAMS || size < 29)
        return -1;
    for (size_t i = 0; i < n; i++) {
        p[i].name = names[i];
        p[i].value = values[i];
    }
    qsort(p, n, sizeof(p[0]), pair_cmp);
    len = strlen(url);
    if (len >= sizeof(data))
        return -1;
    memcpy(data, url, len);
    for (size_t i = 0; i < n; i++) {
        size_t a = strlen(p[i].name), b = strlen(p[i].value);

        if (len + a + b >= sizeof(data))
            return -1;
        memcpy(data + len, p[i].name, a);
        memcpy(data + len + a, p[i].value, b);
        len += a + b;
    }
    if (!HMAC(EVP_sha1(), token, (int)strlen(token), (unsigned char *)data, len,
              mac, &mac_len))
        return -1;
    EVP_EncodeBlock((unsigned char *)out, mac, (int)mac_len);
    return 0;
}

/* application/x-www-form-urlencoded value; returns bytes written. */
static size_t form_encode(char *out, size_t size, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *s && o + 4 < size; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            out[o++] = (char)c;
        } else if (c == ' ') {
            out[o++] = '+';
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}

/* Fills the slot's body and signature header for message seq. */
static int prepare(const struct wh_conf *c, struct slot *s, size_t seq,
                   uint64_t nonce)
{
    char sid[40], from[24], text[96], sig[64], hdr[96];
    const char *names[N_PARAMS] = {
        "AccountSid", "ApiVersion", "Body",        "From",
        "MessageSid", "NumMedia",   "NumSegments", "SmsMessageSid",
        "SmsSid",     "SmsStatus",  "To"};
    const char *values[N_PARAMS];
    size_t n = N_PARAMS, o = 0;

    snprintf(sid, sizeof(sid), "SM%016llx%016llx", (unsigned long long)nonce,
             (unsigned long long)seq);
    snprintf(from, sizeof(from), "+1555%07zu", 3000000 + seq % 1000000);
    snprintf(text, sizeof(text), "w%zu Inbound benchmark message 0123456789",
             seq);
    values[0] = c->account_sid;
    values[1] = "2010-04-01";
    values[2] = text;
    values[3] = from;
    values[4] = sid;
    values[5] = "0";
    values[6] = "1";
    values[7] = sid;
    values[8] = sid;
    values[9] = "received";
    values[10] = c->to;
    for (size_t i = 0; i < n; i++) {
        size_t a = strlen(names[i]);

        if (o + a + 2 >= sizeof(s->body))
            return -1;
        if (i)
            s->body[o++] = '&';
        memcpy(s->body + o, names[i], a);
        o += a;
        s->body[o++] = '=';
        o += form_encode(s->body + o, sizeof(s->body) - o, values[i]);
    }
    curl_slist_free_all(s->hdrs);
    s->hdrs = curl_slist_append(
        NULL, "Content-Type: application/x-www-form-urlencoded");
    s->hdrs = curl_slist_append(s->hdrs, "Expect:");
    if (c->auth_token) {
        if (webhook_twilio_sign(c->auth_token,
                                c->sign_url ? c->sign_url : c->url, names,
                                values, n, sig, sizeof(sig)) < 0)
            return -1;
        snprintf(hdr, sizeof(hdr), "X-Twilio-Signature: %s", sig);
        s->hdrs = curl_slist_append(s->hdrs, hdr);
    }
    if (!s->hdrs)
        return -1;
    s->seq = seq;
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE, (long)o);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->hdrs);
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
    return 0;
}

int webhook_run(const struct wh_conf *c, struct wh_stats *st)
{
    CURLM *multi = curl_multi_init();
    struct slot *slots;
    size_t conc = c->concurrency ? c->concurrency : 1, started = 0,
           finished = 0;
    uint64_t nonce = ((uint64_t)time(NULL) << 20) ^ (uint64_t)clock();
    int running = 0, rc = -1;

    memset(st, 0, sizeof(*st));
    if (conc > c->n)
        conc = c->n ? c->n : 1;
    slots = calloc(conc, sizeof(*slots));
    if (!multi || !slots) {
        fprintf(stderr, "webhook_load: out of memory\n");
        goto out;
    }
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)conc);
    st->t_start = bench_now();
    for (size_t i = 0; i < conc && started < c->n; i++) {
        slots[i].easy = curl_easy_init();
        if (!slots[i].easy)
            goto out;
        curl_easy_setopt(slots[i].easy, CURLOPT_URL, c->url);
        curl_easy_setopt(slots[i].easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(slots[i].easy, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(slots[i].easy, CURLOPT_TIMEOUT_MS, 20000L);
        curl_easy_setopt(slots[i].easy, CURLOPT_USERAGENT, "TwilioProxy/1.1");
        if (prepare(c, &slots[i], started, nonce) < 0)
            goto out;
        if (c->sent_at)
            c->sent_at[started] = bench_now();
        curl_multi_add_handle(multi, slots[i].easy);
        started++;
    }
    while (finished < started) {
        CURLMsg *m;
        int left;

        curl_multi_perform(multi, &running);
        while ((m = curl_multi_info_read(multi, &left))) {
            struct slot *s = NULL;
            long status = 0;

            if (m->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            if (m->data.result == CURLE_OK) {
                curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
                if (status >= 200 && status < 300) {
                    st->ok++;
                } else {
                    if (!st->other++)
                        st->first_other = status;
                }
            } else if (st->errors++ == 0) {
                fprintf(stderr, "webhook_load: first error: %s\n",
                        curl_easy_strerror(m->data.result));
            }
            finished++;
            curl_multi_remove_handle(multi, s->easy);
            if (started < c->n && !(c->cancel && atomic_load(c->cancel))) {
                if (prepare(c, s, started, nonce) < 0)
                    goto out;
                if (c->sent_at)
                    c->sent_at[started] = bench_now();
                curl_multi_add_handle(multi, s->easy);
                started++;
            }
        }
        if (finished < started)
            curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    st->t_end = bench_now();
    rc = st->ok == c->n ? 0 : -1;
out:
    if (slots) {
        for (size_t i = 0; i < conc; i++) {
            if (slots[i].easy) {
                curl_multi_remove_handle(multi, slots[i].easy);
                curl_easy_cleanup(slots[i].easy);
            }
            curl_slist_free_all(slots[i].hdrs);
        }
        free(slots);
    }
    if (multi)
        curl_multi_cleanup(multi);
    return rc;
}
