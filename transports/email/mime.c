/*
 * mime: see mime.h. Owns every use of GMime: building outbound messages
 * and reading inbound ones. Header safety is decided here, before GMime
 * sees any input: addresses and message ids are validated and refused when
 * they carry anything unexpected; free text (subject, display name) has
 * its control characters turned into spaces, so no caller input can ever
 * start a header line. GMime then does the encoding (RFC 2047 words,
 * quoted-printable, folding, CRLF output).
 *
 * Parsing bounds its work (input size, nesting depth, references kept)
 * and returns only clean UTF-8 text: NUL and other controls dropped,
 * undecodable bytes as U+FFFD, never text cut short at a NUL or lost to an
 * unparseable label. It must never write MIME by hand, never trust a
 * charset label to be valid, never recurse without a depth bound, and
 * never log message contents above debug.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>

#include "addr.h"
#include "html_text.h"
#include "mime.h"
#include "util.h"

/* RFC 5322 caps lines at 998 octets; longer body lines need QP. */
#define MAX_LINE 998
/* A msg-id longer than this is refused (compose) or dropped (parse). */
#define MAX_ID 250

static bool mime_ready;

void mime_global_init(void)
{
    if (mime_ready)
        return;
    g_mime_init();
    html_text_init();
    mime_ready = true;
}

void mime_global_cleanup(void)
{
    if (!mime_ready)
        return;
    g_mime_shutdown();
    mime_ready = false;
}

/* ---- text hygiene ---- */

/*
 * Copies len bytes of s (which may hold NUL bytes) into malloc'd, valid
 * UTF-8: invalid bytes become U+FFFD, CRLF and lone CR become LF, NUL and
 * the other controls except tab/LF are dropped. With single_line, tab, LF,
 * U+2028 and U+2029 become spaces and runs of spaces collapse, and the
 * result is trimmed. Returned owned (free()).
 */
static char *clean_text(const char *s, size_t len, bool single_line)
{
    char *no_nul = NULL;
    gchar *valid;
    struct strbuf b;
    const char *p;

    /* U+0000 is not allowed in XML (so not in XMPP) and would end the C
     * string early: it goes, like every other C0 control, and the text
     * after it stays. */
    if (len && memchr(s, '\0', len)) {
        size_t n = 0;

        no_nul = xmalloc(len);
        for (size_t i = 0; i < len; i++)
            if (s[i] != '\0')
                no_nul[n++] = s[i];
        s = no_nul;
        len = n;
    }
    valid = g_utf8_make_valid(s, (gssize)len);
    free(no_nul);
    p = valid;
    sb_init(&b);
    while (*p) {
        gunichar c = g_utf8_get_char(p);
        const char *next = p + g_utf8_skip[*(const guchar *)p];
        bool space = false;

        if (c == '\r') {
            if (*next == '\n')
                next++;
            c = '\n';
        }
        if (c == '\t' || c == '\n' || c == 0x2028 || c == 0x2029)
            space = single_line;
        else if (c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f)) {
            /* C0/C1 controls carry nothing a chat line can show */
            if (single_line)
                space = true;
            else {
                p = next;
                continue;
            }
        }
        if (space) {
            if (b.len && b.s[b.len - 1] != ' ')
                sb_putc(&b, ' ');
        } else if (c == '\n' || c == 0x2028 || c == 0x2029) {
            sb_putc(&b, '\n');
        } else {
            sb_append(&b, p, (size_t)(next - p));
        }
        p = next;
    }
    g_free(valid);
    if (single_line) {
        while (b.len && b.s[b.len - 1] == ' ')
            b.s[--b.len] = '\0';
        if (b.len && b.s[0] == ' ') {
            memmove(b.s, b.s + 1, b.len);
            b.len--;
        }
    }
    return sb_steal(&b);
}

/*
 * Free text for a header: clean_text's single line, and a WORD JOINER
 * (U+2060, invisible) after every "=" that a "?" follows. GMime 3.2
 * leaves ASCII words alone when it encodes a header, so a word such as
 * "=?8?q?" went out as written: readers then take it for the start of an
 * encoded word, and GMime's own folding split such a run in the middle of
 * a line, leaving a header line that does not start with a name or white
 * space. With the joiner the word is not ASCII, so GMime encodes it.
 * Returned owned (free()).
 */
static char *header_text(const char *s)
{
    char *t = clean_text(s, strlen(s), true);
    struct strbuf b;

    if (!strstr(t, "=?"))
        return t;
    sb_init(&b);
    for (const char *p = t; *p; p++) {
        sb_putc(&b, *p);
        if (p[0] == '=' && p[1] == '?')
            sb_puts(&b, "\xe2\x81\xa0");
    }
    free(t);
    return sb_steal(&b);
}

/* A msg-id body (between < and >): printable ASCII, no space, no <>. */
static bool msgid_ok(const char *s, size_t n)
{
    if (n == 0 || n > MAX_ID)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>')
            return false;
    }
    return true;
}

/* ---- compose ---- */

/* The ids of a References value; -1 when one is unusable. */
static int split_ids(const char *s, GPtrArray *ids)
{
    while (*s) {
        const char *w;
        size_t n;

        if (*s == ' ' || *s == '\t') {
            s++;
            continue;
        }
        w = s;
        while (*s && *s != ' ' && *s != '\t')
            s++;
        n = (size_t)(s - w);
        /* tolerate ids that already carry their brackets */
        if (n >= 2 && w[0] == '<' && w[n - 1] == '>') {
            w++;
            n -= 2;
        }
        if (!msgid_ok(w, n))
            return -1;
        g_ptr_array_add(ids, g_strdup_printf("<%.*s>", (int)n, w));
    }
    return 0;
}

static bool body_needs_qp(const char *body)
{
    size_t line = 0;

    for (const unsigned char *p = (const unsigned char *)body; *p; p++) {
        if (*p >= 0x80)
            return true;
        if (*p == '\n') {
            line = 0;
            continue;
        }
        if (++line > MAX_LINE)
            return true;
    }
    return false;
}

/* Body as UTF-8 with LF line ends (GMime writes CRLF) and a final LF. */
static char *normalize_body(const char *body)
{
    char *t = clean_text(body, strlen(body), false);
    size_t n = strlen(t);

    if (n == 0 || t[n - 1] != '\n') {
        t = xrealloc(t, n + 2);
        t[n] = '\n';
        t[n + 1] = '\0';
    }
    return t;
}

char *mime_compose(const struct mail_compose *c, size_t *len, char **msgid,
                   struct error *err)
{
    char probe[EMAIL_MAX + 2], hex[33];
    GMimeMessage *m = NULL;
    GMimeTextPart *part = NULL;
    GMimeFormatOptions *fo = NULL;
    GPtrArray *refs = NULL;
    InternetAddress *ia;
    char *name = NULL, *subject = NULL, *body = NULL, *id = NULL;
    char *res = NULL;

    *len = 0;
    *msgid = NULL;
    mime_global_init();
    if (!c->from || !email_valid(c->from)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "mime: the sender address is not a valid address");
        goto out;
    }
    if (!c->to || !email_valid(c->to)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "mime: the recipient address is not a valid address");
        goto out;
    }
    if (!c->msgid_domain ||
        snprintf(probe, sizeof(probe), "x@%s", c->msgid_domain) >=
            (int)sizeof(probe) ||
        !email_valid(probe)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "mime: the Message-ID domain is not a domain");
        goto out;
    }
    if (c->in_reply_to && *c->in_reply_to &&
        !msgid_ok(c->in_reply_to, strlen(c->in_reply_to))) {
        error_set(err, COND_BAD_REQUEST, false,
                  "mime: In-Reply-To is not a usable message id");
        goto out;
    }
    refs = g_ptr_array_new_with_free_func(g_free);
    if (c->references && split_ids(c->references, refs) != 0) {
        error_set(err, COND_BAD_REQUEST, false,
                  "mime: References holds an unusable message id");
        goto out;
    }
    /* RFC 5322 3.6.4 lets a long chain be shortened: keep the first id
     * (the thread's root) and the most recent ones. */
    if (refs->len > MIME_MAX_REFERENCES)
        g_ptr_array_remove_range(refs, 1, refs->len - MIME_MAX_REFERENCES);

    m = g_mime_message_new(TRUE);

    name = c->from_name ? header_text(c->from_name) : NULL;
    ia = internet_address_mailbox_new(name && *name ? name : NULL, c->from);
    internet_address_set_charset(ia, "utf-8");
    internet_address_list_add(g_mime_message_get_from(m), ia);
    g_object_unref(ia);
    ia = internet_address_mailbox_new(NULL, c->to);
    internet_address_list_add(g_mime_message_get_to(m), ia);
    g_object_unref(ia);

    subject = c->subject ? header_text(c->subject) : NULL;
    if (subject && *subject)
        g_mime_message_set_subject(m, subject, "utf-8");

    GDateTime *now = g_date_time_new_now_utc();
    g_mime_message_set_date(m, now);
    g_date_time_unref(now);

    random_hex(hex, 16); /* 128 bits */
    id = xasprintf("%s@%s", hex, c->msgid_domain);
    char *bracketed = xasprintf("<%s>", id);
    g_mime_object_set_header(GMIME_OBJECT(m), "Message-ID", bracketed, NULL);
    free(bracketed);

    if (c->in_reply_to && *c->in_reply_to) {
        char *v = xasprintf("<%s>", c->in_reply_to);
        g_mime_object_set_header(GMIME_OBJECT(m), "In-Reply-To", v, NULL);
        free(v);
    }
    if (refs->len) {
        /* GMime folds References between ids. */
        g_ptr_array_add(refs, NULL);
        gchar *v = g_strjoinv(" ", (gchar **)refs->pdata);
        g_mime_object_set_header(GMIME_OBJECT(m), "References", v, NULL);
        g_free(v);
    }

    body = normalize_body(c->body ? c->body : "");
    part = g_mime_text_part_new_with_subtype("plain");
    {
        /* Content set as bytes: g_mime_text_part_set_text would recode to
         * the "best" charset (ISO-8859-1 for most Latin text). */
        GMimeStream *s = g_mime_stream_mem_new_with_buffer(body, strlen(body));
        GMimeDataWrapper *w = g_mime_data_wrapper_new_with_stream(
            s, GMIME_CONTENT_ENCODING_DEFAULT);
        g_mime_part_set_content(GMIME_PART(part), w);
        g_object_unref(w);
        g_object_unref(s);
    }
    g_mime_text_part_set_charset(part, "utf-8");
    g_mime_part_set_content_encoding(
        GMIME_PART(part), body_needs_qp(body)
                              ? GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE
                              : GMIME_CONTENT_ENCODING_7BIT);
    g_mime_message_set_mime_part(m, GMIME_OBJECT(part));

    fo = g_mime_format_options_new();
    g_mime_format_options_set_newline_format(fo, GMIME_NEWLINE_FORMAT_DOS);
    {
        GMimeStream *s = g_mime_stream_mem_new();
        GByteArray *bytes;

        if (g_mime_object_write_to_stream(GMIME_OBJECT(m), fo, s) < 0) {
            g_object_unref(s);
            error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                      "mime: cannot render the message");
            goto out;
        }
        bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(s));
        res = xmalloc(bytes->len + 1);
        memcpy(res, bytes->data, bytes->len);
        res[bytes->len] = '\0';
        *len = bytes->len;
        g_object_unref(s);
    }
    *msgid = id;
    id = NULL;

out:
    if (fo)
        g_mime_format_options_free(fo);
    if (part)
        g_object_unref(part);
    if (m)
        g_object_unref(m);
    if (refs)
        g_ptr_array_free(refs, TRUE);
    free(name);
    free(subject);
    free(body);
    free(id);
    return res;
}

/* ---- parse ---- */

/*
 * Which inline parts become the text:
 * - every inline text/plain part without a filename, in order, joined by
 *   a blank line (Apple Mail's text/image/text, list footers added as a
 *   part of their own), blank ones skipped;
 * - a multipart/alternative gives one of its branches: the first whose
 *   text/plain holds text, else its first text/html made text (a blank
 *   text/plain beside real HTML is common), in place;
 * - when all that gives nothing: the first other text/html part, as text;
 * - when there is none: the first inline text part that carries a
 *   filename (plain before HTML), which is then not listed as an
 *   attachment. Thunderbird and Apple Mail show such a part in the body;
 *   when other text exists it stays an attachment, as Gmail lists it.
 * A part whose disposition is "attachment" is never the text.
 */
struct walk {
    GMimeParserOptions *po;
    struct strbuf text; /* joined text so far */
    GMimeObject *html;  /* first unnamed inline text/html not yet used */
    GMimeObject *named_plain, *named_html; /* first named inline ones */
    struct mail_attachment *named_plain_att, *named_html_att;
    GPtrArray *atts; /* struct mail_attachment * */
    bool too_deep;
};

enum text_kind { KIND_OTHER, KIND_PLAIN, KIND_HTML };

static char *single_line_or_null(const char *s)
{
    char *c;

    if (!s)
        return NULL;
    c = clean_text(s, strlen(s), true);
    if (!*c) {
        free(c);
        return NULL;
    }
    return c;
}

/*
 * GMime 3.2.13 decodes adjacent B words of one charset as one base64 run,
 * so a word that ends in padding ("=?UTF-8?B?SGVsbG8=?=") ends the run and
 * every word after it is lost (GMime issue #133, fixed after the version
 * Debian 12 ships). Long non-ASCII subjects are sent exactly so. Each
 * padded B word is rewritten here as the Q word of the same bytes, which
 * GMime joins correctly. Returns the new value (g_free()), or NULL when
 * there was nothing to rewrite.
 */
static char *requote_b_words(const char *v)
{
    struct strbuf b;
    const char *p = v, *w;
    bool changed = false;

    sb_init(&b);
    while ((w = strstr(p, "=?"))) {
        const char *cs = w + 2, *q1, *text, *end;

        q1 = cs + strcspn(cs, "? \t\r\n");
        if (*q1 != '?' || q1 == cs || (q1[1] != 'B' && q1[1] != 'b') ||
            q1[2] != '?') {
            sb_append(&b, p, (size_t)(cs - p));
            p = cs;
            continue;
        }
        text = q1 + 3;
        end = text + strcspn(text, "? \t\r\n");
        if (end[0] != '?' || end[1] != '=' || end == text || end[-1] != '=') {
            sb_append(&b, p, (size_t)(text - p));
            p = text;
            continue;
        }
        {
            gchar *b64 = g_strndup(text, (gsize)(end - text));
            gsize n = 0;
            guchar *bytes = g_base64_decode(b64, &n);

            sb_append(&b, p, (size_t)(w - p));
            sb_printf(&b, "=?%.*s?Q?", (int)(q1 - cs), cs);
            for (gsize i = 0; i < n; i++)
                sb_printf(&b, "=%02X", bytes[i]);
            sb_puts(&b, "?=");
            g_free(bytes);
            g_free(b64);
        }
        p = end + 2;
        changed = true;
    }
    if (!changed) {
        sb_free(&b);
        return NULL;
    }
    sb_puts(&b, p);
    {
        gchar *res = g_strdup(b.s);
        sb_free(&b);
        return res;
    }
}

/* obj's header name, unfolded and requoted (g_free()); NULL when it is
 * absent or GMime's own reading of it can be used. */
static char *requoted_header(GMimeObject *obj, const char *name)
{
    GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
    GMimeHeader *h = hl ? g_mime_header_list_get_header(hl, name) : NULL;
    const char *raw = h ? g_mime_header_get_raw_value(h) : NULL;
    char *unfolded, *res;

    if (!raw || !strstr(raw, "=?"))
        return NULL;
    unfolded = g_mime_utils_header_unfold(raw);
    res = requote_b_words(unfolded);
    g_free(unfolded);
    return res;
}

/* A message's subject, cleaned, or NULL. Returned owned (free()). */
static char *subject_of(GMimeMessage *m, GMimeParserOptions *po)
{
    char *v = requoted_header(GMIME_OBJECT(m), "Subject");
    char *res;

    if (!v)
        return single_line_or_null(g_mime_message_get_subject(m));
    gchar *d = g_mime_utils_header_decode_text(po, v);
    res = single_line_or_null(d);
    g_free(d);
    g_free(v);
    return res;
}

/* A part's filename, as g_mime_part_get_filename reads it, cleaned, or
 * NULL. Returned owned (free()). */
static char *filename_of(GMimeObject *obj, GMimeParserOptions *po)
{
    GMimeContentDisposition *d = g_mime_object_get_content_disposition(obj);
    GMimeContentType *ct = g_mime_object_get_content_type(obj);
    const char *f = NULL;
    char *v, *res;

    if (d && (f = g_mime_content_disposition_get_parameter(d, "filename"))) {
        if ((v = requoted_header(obj, "Content-Disposition"))) {
            GMimeContentDisposition *fixed =
                g_mime_content_disposition_parse(po, v);
            const char *ff =
                g_mime_content_disposition_get_parameter(fixed, "filename");
            res = single_line_or_null(ff ? ff : f);
            g_object_unref(fixed);
            g_free(v);
            return res;
        }
        return single_line_or_null(f);
    }
    if (ct && (f = g_mime_content_type_get_parameter(ct, "name"))) {
        if ((v = requoted_header(obj, "Content-Type"))) {
            GMimeContentType *fixed = g_mime_content_type_parse(po, v);
            const char *ff = g_mime_content_type_get_parameter(fixed, "name");
            res = single_line_or_null(ff ? ff : f);
            g_object_unref(fixed);
            g_free(v);
            return res;
        }
        return single_line_or_null(f);
    }
    return NULL;
}

static char *lower_dup(const char *s)
{
    char *d = xstrdup(s);

    for (char *p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

/* RFC 2045 token characters: no controls, space or tspecials. */
static bool token_char(char c)
{
    return (unsigned char)c > 0x20 && (unsigned char)c < 0x7f &&
           !strchr("()<>@,;:\\\"/[]?=", c);
}

/* Skips folding white space and (nested) comments. */
static const char *skip_cfws(const char *p)
{
    int depth = 0;

    for (; *p; p++) {
        if (depth) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '(')
                depth++;
            else if (*p == ')')
                depth--;
        } else if (*p == '(') {
            depth++;
        } else if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            break;
        }
    }
    return p;
}

/*
 * Reads type "/" subtype at the start of a raw Content-Type value; false
 * when either is not a token. What follows (parameters) is not judged:
 * GMime reads those leniently.
 */
static bool raw_type(const char *raw, const char **t, size_t *tn,
                     const char **st, size_t *sn)
{
    const char *p = skip_cfws(raw);

    for (*t = p; token_char(*p); p++)
        ;
    *tn = (size_t)(p - *t);
    p = skip_cfws(p);
    if (*tn == 0 || *p != '/')
        return false;
    p = skip_cfws(p + 1);
    for (*st = p; token_char(*p); p++)
        ;
    *sn = (size_t)(p - *st);
    return *sn > 0;
}

/*
 * Whether obj's Content-Type header is there but not syntactically valid.
 * GMime accepts some invalid ones ("/plain", 8-bit tokens) and reports
 * others as application/octet-stream, as it does for that type written
 * out: the raw value decides.
 */
static bool type_invalid(GMimeObject *obj, GMimeContentType *ct)
{
    GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
    GMimeHeader *h =
        hl ? g_mime_header_list_get_header(hl, "Content-Type") : NULL;
    const char *raw = h ? g_mime_header_get_raw_value(h) : NULL;
    const char *t, *st;
    size_t tn, sn;

    if (!h)
        return false; /* missing: GMime applies the RFC 2045 default */
    if (!raw || !raw_type(raw, &t, &tn, &st, &sn))
        return true;
    /* GMime found it invalid where this check did not: believe GMime */
    return ct &&
           g_mime_content_type_is_type(ct, "application", "octet-stream") &&
           !(tn == 11 && strncasecmp(t, "application", 11) == 0 && sn == 12 &&
             strncasecmp(st, "octet-stream", 12) == 0);
}

/*
 * What a leaf part offers the text. RFC 2045 5.2: a syntactically invalid
 * Content-Type means "text/plain; charset=us-ascii"; *as_ascii says so,
 * and that the charset parameter is not to be believed.
 */
static enum text_kind part_kind(GMimeObject *obj, bool *as_ascii)
{
    GMimeContentType *ct = g_mime_object_get_content_type(obj);

    *as_ascii = false;
    if (type_invalid(obj, ct)) {
        *as_ascii = true;
        return KIND_PLAIN;
    }
    if (ct && g_mime_content_type_is_type(ct, "text", "plain"))
        return KIND_PLAIN;
    if (ct && g_mime_content_type_is_type(ct, "text", "html"))
        return KIND_HTML;
    return KIND_OTHER;
}

static size_t decoded_size(GMimePart *part)
{
    GMimeDataWrapper *w = g_mime_part_get_content(part);
    GMimeStream *null;
    gint64 n;

    if (!w)
        return 0;
    null = g_mime_stream_null_new();
    n = g_mime_data_wrapper_write_to_stream(w, null);
    g_object_unref(null);
    return n > 0 ? (size_t)n : 0;
}

static size_t message_size(GMimeMessagePart *mp)
{
    GMimeMessage *inner = g_mime_message_part_get_message(mp);
    GMimeStream *null;
    gint64 n;

    if (!inner)
        return 0;
    null = g_mime_stream_null_new();
    n = g_mime_object_write_to_stream(GMIME_OBJECT(inner), NULL, null);
    g_object_unref(null);
    return n > 0 ? (size_t)n : 0;
}

/* type overrides ct when not NULL. Returns the entry, owned by w->atts. */
static struct mail_attachment *add_attachment(struct walk *w, const char *name,
                                              size_t size, GMimeContentType *ct,
                                              const char *type)
{
    struct mail_attachment *a = xcalloc(1, sizeof(*a));
    char *t = !type && ct ? g_mime_content_type_get_mime_type(ct) : NULL;

    a->name = clean_text(name, strlen(name), true);
    if (!*a->name) {
        free(a->name);
        a->name = xstrdup("unnamed");
    }
    a->size = size;
    a->type = lower_dup(type ? type : t ? t : "application/octet-stream");
    g_free(t);
    g_ptr_array_add(w->atts, a);
    return a;
}

static void attachment_free(struct mail_attachment *a)
{
    free(a->name);
    free(a->type);
    free(a);
}

static bool is_signature(GMimeContentType *ct)
{
    return ct &&
           (g_mime_content_type_is_type(ct, "application", "pgp-signature") ||
            g_mime_content_type_is_type(ct, "application", "pkcs7-signature") ||
            g_mime_content_type_is_type(ct, "application",
                                        "x-pkcs7-signature"));
}

static bool charset_in(const char *cs, const char *const *names)
{
    for (; *names; names++)
        if (g_ascii_strcasecmp(cs, *names) == 0)
            return true;
    return false;
}

/*
 * Converts with cd, every byte iconv refuses becoming one U+FFFD (GMime's
 * own charset filter drops them silently, so words would lose letters
 * without a trace).
 */
static void convert_lossy(iconv_t cd, const char *in, size_t len,
                          struct strbuf *b)
{
    char buf[4096];
    char *ip = (char *)(uintptr_t)in; /* iconv's prototype is not const */
    char *op;
    size_t il = len, ol;

    iconv(cd, NULL, NULL, NULL, NULL);
    while (il > 0) {
        op = buf;
        ol = sizeof(buf);
        size_t r = iconv(cd, &ip, &il, &op, &ol);
        sb_append(b, buf, (size_t)(op - buf));
        if (r != (size_t)-1)
            continue;
        if (errno == E2BIG && op != buf)
            continue;
        sb_puts(b, "\xef\xbf\xbd");
        if (errno == EILSEQ) {
            ip++;
            il--;
            continue;
        }
        break; /* EINVAL: the input ends inside a character */
    }
    op = buf;
    ol = sizeof(buf);
    iconv(cd, NULL, NULL, &op, &ol); /* back to the initial shift state */
    sb_append(b, buf, (size_t)(op - buf));
}

/*
 * len bytes in charset cs (NULL: none given) as UTF-8 that may still hold
 * NUL and invalid sequences, for clean_text to finish; *out_len is set.
 * Returned owned (free()).
 * - UTF-8: as is (clean_text turns each invalid byte into U+FFFD).
 * - no label or US-ASCII, which mailers put on 8-bit text all the time:
 *   UTF-8 when the bytes are UTF-8, else windows-1252, the same fallback
 *   as for raw 8-bit headers.
 * - a charset iconv knows: converted, refused bytes become U+FFFD.
 * - a charset nobody knows: as is, so ASCII survives and the rest becomes
 *   U+FFFD.
 */
static char *decode_charset(const char *in, size_t len, const char *cs,
                            size_t *out_len)
{
    static const char *const ascii[] = {
        "us-ascii",
        "ascii",
        "us",
        "ansi_x3.4-1968",
        "ansi_x3.4-1986",
        "csascii",
        "cp367",
        "ibm367",
        "iso646-us",
        "iso-646-us",
        "iso-ir-6",
        "iso_646.irv:1991",
        NULL,
    };
    static const char *const utf8[] = {"utf-8", "utf8", "unicode-1-1-utf-8",
                                       NULL};
    struct strbuf b;
    iconv_t cd;

    sb_init(&b);
    if (cs && charset_in(cs, utf8)) {
        sb_append(&b, in, len);
    } else if (!cs || !*cs || charset_in(cs, ascii)) {
        bool is_utf8 = true;
        const char *p = in, *end = in + len, *bad;

        /* NUL is ASCII here: g_utf8_validate_len would stop at it */
        while (p < end && is_utf8) {
            is_utf8 = g_utf8_validate_len(p, (gsize)(end - p), &bad);
            if (!is_utf8 && *bad == '\0') {
                is_utf8 = true;
                p = bad + 1;
            } else {
                p = end;
            }
        }
        cd = is_utf8 ? (iconv_t)-1 : g_mime_iconv_open("UTF-8", "CP1252");
        if (cd == (iconv_t)-1) {
            sb_append(&b, in, len);
        } else {
            convert_lossy(cd, in, len, &b);
            g_mime_iconv_close(cd);
        }
    } else if ((cd = g_mime_iconv_open("UTF-8", cs)) != (iconv_t)-1) {
        convert_lossy(cd, in, len, &b);
        g_mime_iconv_close(cd);
    } else {
        sb_append(&b, in, len);
    }
    *out_len = b.len;
    return sb_steal(&b);
}

/* A part's text as clean UTF-8, whatever its charset label says. */
static char *part_text(GMimeObject *obj)
{
    GMimePart *part = GMIME_PART(obj);
    GMimeDataWrapper *w = g_mime_part_get_content(part);
    GMimeContentType *ct = g_mime_object_get_content_type(obj);
    GMimeStream *mem;
    GByteArray *bytes;
    const char *cs = NULL;
    bool as_ascii;
    char *utf8, *res;
    size_t n;

    if (!w)
        return xstrdup("");
    (void)part_kind(obj, &as_ascii);
    if (!as_ascii && ct)
        cs = g_mime_content_type_get_parameter(ct, "charset");
    /* Undo the transfer encoding into memory with its length: the text
     * may hold NUL bytes, which g_mime_text_part_get_text would cut at.
     * Decoding never grows the data, and the input is bounded. */
    mem = g_mime_stream_mem_new();
    g_mime_data_wrapper_write_to_stream(w, mem);
    bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    utf8 = decode_charset(bytes->len ? (const char *)bytes->data : "",
                          bytes->len, cs, &n);
    g_object_unref(mem);
    res = clean_text(utf8, n, false);
    free(utf8);
    return res;
}

/* The newline before a boundary belongs to the boundary; trailing
 * blank lines are noise in a chat message either way. */
static void trim_end(char *s)
{
    size_t n = strlen(s);

    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

static char *html_part_text(GMimeObject *obj)
{
    char *html = part_text(obj);
    char *t = html_text_convert(html, strlen(html));
    char *res = clean_text(t, strlen(t), false);

    free(html);
    free(t);
    return res;
}

/* Adds one part's text, trailing blanks trimmed, unless it is blank. */
static void append_text(struct walk *w, char *t)
{
    trim_end(t);
    if (str_blank(t))
        return;
    if (w->text.len)
        sb_puts(&w->text, "\n\n");
    sb_puts(&w->text, t);
}

/* text_off: inside an alternative branch after the one already chosen. */
static void walk(struct walk *w, GMimeObject *obj, int depth, bool text_off)
{
    GMimeContentType *ct;

    if (!obj || w->too_deep)
        return;
    if (depth > MIME_MAX_DEPTH) {
        w->too_deep = true;
        return;
    }
    ct = g_mime_object_get_content_type(obj);

    if (GMIME_IS_MULTIPART(obj)) {
        int n = g_mime_multipart_get_count(GMIME_MULTIPART(obj));
        bool alt =
            ct && g_mime_content_type_is_type(ct, "multipart", "alternative");
        bool chosen = false;
        GMimeObject *outer_html = w->html;

        if (alt)
            w->html = NULL; /* this group's own HTML branch */
        for (int i = 0; i < n && !w->too_deep; i++) {
            size_t before = w->text.len;

            walk(w, g_mime_multipart_get_part(GMIME_MULTIPART(obj), i),
                 depth + 1, text_off || chosen);
            /* plain text wins among alternatives, wherever it is */
            if (alt && w->text.len > before)
                chosen = true;
        }
        if (alt) {
            if (!chosen && !text_off && w->html && !w->too_deep) {
                char *t = html_part_text(w->html);
                append_text(w, t);
                free(t);
            }
            w->html = outer_html;
        }
        return;
    }
    if (GMIME_IS_MESSAGE_PART(obj)) {
        /* A forwarded message is listed, not read as the body. */
        GMimeMessagePart *mp = GMIME_MESSAGE_PART(obj);
        GMimeMessage *inner = g_mime_message_part_get_message(mp);
        char *name = filename_of(obj, w->po);

        if (!name && inner)
            name = subject_of(inner, w->po);
        add_attachment(w, name ? name : "forwarded message", message_size(mp),
                       ct, NULL);
        free(name);
        return;
    }
    if (!GMIME_IS_PART(obj))
        return;

    bool as_ascii;
    enum text_kind kind = part_kind(obj, &as_ascii);
    const char *disp = g_mime_object_get_disposition(obj);
    char *filename = filename_of(obj, w->po);
    bool attached = disp && strcasecmp(disp, "attachment") == 0;
    struct mail_attachment *a;

    if (kind != KIND_OTHER && !attached && !filename) {
        if (text_off)
            return; /* the same text as the chosen alternative */
        if (kind == KIND_PLAIN) {
            char *t = part_text(obj);
            append_text(w, t);
            free(t);
        } else if (!w->html) {
            w->html = obj;
        }
        return;
    }
    if (is_signature(ct)) {
        free(filename);
        return;
    }
    a = add_attachment(w, filename ? filename : "unnamed",
                       decoded_size(GMIME_PART(obj)), ct,
                       as_ascii ? "text/plain" : NULL);
    free(filename);
    if (kind == KIND_OTHER || attached || text_off)
        return;
    if (kind == KIND_PLAIN && !w->named_plain) {
        w->named_plain = obj;
        w->named_plain_att = a;
    } else if (kind == KIND_HTML && !w->named_html) {
        w->named_html = obj;
        w->named_html_att = a;
    }
}

static char *id_or_null(const char *s)
{
    if (!s)
        return NULL;
    return msgid_ok(s, strlen(s)) ? xstrdup(s) : NULL;
}

static void parse_from(GMimeMessage *m, GMimeParserOptions *po,
                       struct mail_parsed *out)
{
    char *v = requoted_header(GMIME_OBJECT(m), "From");
    InternetAddressList *own = v ? internet_address_list_parse(po, v) : NULL;
    InternetAddressList *l = own ? own : g_mime_message_get_from(m);
    InternetAddress *ia = NULL;

    g_free(v);
    if (!l || internet_address_list_length(l) < 1)
        goto out;
    ia = internet_address_list_get_address(l, 0);
    /* "From: Team: a@x;" names a group; its first member speaks. */
    while (ia && INTERNET_ADDRESS_IS_GROUP(ia)) {
        InternetAddressList *mem =
            internet_address_group_get_members(INTERNET_ADDRESS_GROUP(ia));
        ia = mem && internet_address_list_length(mem) > 0
                 ? internet_address_list_get_address(mem, 0)
                 : NULL;
    }
    if (!ia || !INTERNET_ADDRESS_IS_MAILBOX(ia))
        goto out;
    const char *addr =
        internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
    if (addr) {
        char *a = xstrdup(addr);
        char *at = strrchr(a, '@');
        if (at)
            for (char *p = at; *p; p++)
                *p = (char)tolower((unsigned char)*p);
        if (email_valid(a))
            out->from_addr = a;
        else
            free(a);
    }
    out->from_name = single_line_or_null(internet_address_get_name(ia));
out:
    if (own)
        g_object_unref(own);
}

static void parse_ids(GMimeMessage *m, GMimeParserOptions *po,
                      struct mail_parsed *out)
{
    const char *v;
    GMimeReferences *r;

    out->message_id = id_or_null(g_mime_message_get_message_id(m));

    v = g_mime_object_get_header(GMIME_OBJECT(m), "In-Reply-To");
    if (v && (r = g_mime_references_parse(po, v))) {
        for (int i = 0; i < g_mime_references_length(r); i++) {
            out->in_reply_to =
                id_or_null(g_mime_references_get_message_id(r, i));
            if (out->in_reply_to)
                break;
        }
        g_mime_references_free(r);
    }

    v = g_mime_object_get_header(GMIME_OBJECT(m), "References");
    if (v && (r = g_mime_references_parse(po, v))) {
        int n = g_mime_references_length(r);
        /* Keep the root and the most recent ids of a very long chain. */
        for (int i = 0; i < n; i++) {
            char *id;
            if (i > 0 && n > MIME_MAX_REFERENCES &&
                i < n - (MIME_MAX_REFERENCES - 1))
                continue;
            id = id_or_null(g_mime_references_get_message_id(r, i));
            if (!id)
                continue;
            out->references =
                xrealloc(out->references,
                         (out->n_references + 1) * sizeof(*out->references));
            out->references[out->n_references++] = id;
        }
        g_mime_references_free(r);
    }
}

/* Drops a, which walk listed, because its part became the text. */
static void unlist(struct walk *w, struct mail_attachment *a)
{
    if (g_ptr_array_remove(w->atts, a))
        attachment_free(a);
}

/* Length of the top-level header section, up to its blank line. */
static size_t header_section_len(const char *d, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (d[i] != '\n')
            continue;
        if (i + 1 < len &&
            (d[i + 1] == '\n' ||
             (d[i + 1] == '\r' && i + 2 < len && d[i + 2] == '\n')))
            return i + 1;
    }
    return len;
}

/* The text as struct walk's comment describes it. Returned owned. */
static char *body_text(struct walk *w)
{
    char *t;

    if (w->text.len)
        return sb_steal(&w->text);
    if (w->html) {
        t = html_part_text(w->html);
    } else if (w->named_plain) {
        t = part_text(w->named_plain);
        unlist(w, w->named_plain_att);
    } else if (w->named_html) {
        t = html_part_text(w->named_html);
        unlist(w, w->named_html_att);
    } else {
        t = xstrdup("");
    }
    trim_end(t);
    return t;
}

int mime_parse(const char *data, size_t len, struct mail_parsed *out,
               struct error *err)
{
    static const char *fallback[] = {"utf-8", "windows-1252", NULL};
    GMimeParserOptions *po = NULL;
    GMimeStream *stream = NULL;
    GMimeParser *parser = NULL;
    GMimeMessage *m = NULL;
    struct walk w = {.html = NULL};
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (len > MIME_MAX_INPUT) {
        error_set(err, COND_POLICY_VIOLATION, false,
                  "mime: message of %zu bytes is above the limit of %u", len,
                  MIME_MAX_INPUT);
        return -1;
    }
    if (!data || len == 0) {
        error_set(err, COND_BAD_REQUEST, false, "mime: empty message");
        return -1;
    }
    mime_global_init();

    po = g_mime_parser_options_new();
    g_mime_parser_options_set_rfc2047_compliance_mode(
        po, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_address_compliance_mode(
        po, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_parameter_compliance_mode(
        po, GMIME_RFC_COMPLIANCE_LOOSE);
    /* Raw 8-bit headers: UTF-8 when they are, else the usual Windows
     * Latin charset senders meant. */
    g_mime_parser_options_set_fallback_charsets(po, fallback);

    /* One copy of the input; bounded by MIME_MAX_INPUT above. GMime keeps
     * header values as C strings, so a NUL would cut a From or Subject
     * short: in the message's own header section it becomes a space, as
     * other controls in single-line fields do. */
    {
        GByteArray *copy = g_byte_array_sized_new((guint)len);
        size_t hl = header_section_len(data, len);

        g_byte_array_append(copy, (const guint8 *)data, (guint)len);
        for (size_t i = 0; i < hl; i++)
            if (copy->data[i] == '\0')
                copy->data[i] = ' ';
        stream = g_mime_stream_mem_new_with_byte_array(copy);
    }
    parser = g_mime_parser_new_with_stream(stream);
    g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
    m = g_mime_parser_construct_message(parser, po);
    if (!m) {
        error_set(err, COND_BAD_REQUEST, false,
                  "mime: the data is not a mail message");
        goto out;
    }

    sb_init(&w.text);
    w.po = po;
    w.atts = g_ptr_array_new();
    walk(&w, g_mime_message_get_mime_part(m), 0, false);
    if (w.too_deep) {
        for (guint i = 0; i < w.atts->len; i++)
            attachment_free(w.atts->pdata[i]);
        error_set(err, COND_POLICY_VIOLATION, false,
                  "mime: MIME nesting deeper than %d", MIME_MAX_DEPTH);
        goto out;
    }

    parse_from(m, po, out);
    out->subject = subject_of(m, po);
    parse_ids(m, po, out);

    out->text = body_text(&w);

    if (w.atts->len) {
        out->attachments = xcalloc(w.atts->len, sizeof(*out->attachments));
        for (guint i = 0; i < w.atts->len; i++) {
            struct mail_attachment *a = w.atts->pdata[i];
            out->attachments[i] = *a;
            free(a);
        }
        out->n_attachments = w.atts->len;
    }
    rc = 0;

out:
    sb_free(&w.text);
    if (w.atts)
        g_ptr_array_free(w.atts, TRUE);
    if (m)
        g_object_unref(m);
    if (parser)
        g_object_unref(parser);
    if (stream)
        g_object_unref(stream);
    if (po)
        g_mime_parser_options_free(po);
    if (rc != 0)
        mime_parsed_free(out);
    return rc;
}

void mime_parsed_free(struct mail_parsed *m)
{
    if (!m)
        return;
    free(m->from_addr);
    free(m->from_name);
    free(m->subject);
    free(m->text);
    free(m->message_id);
    free(m->in_reply_to);
    for (size_t i = 0; i < m->n_references; i++)
        free(m->references[i]);
    free(m->references);
    for (size_t i = 0; i < m->n_attachments; i++) {
        free(m->attachments[i].name);
        free(m->attachments[i].type);
    }
    free(m->attachments);
    memset(m, 0, sizeof(*m));
}
