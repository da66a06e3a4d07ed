/*
 * html_text: HTML to readable plain text on libxml2's HTML parser (the only
 * module that includes libxml headers). Pure code.
 */
#ifndef POSTERN_HTML_TEXT_H
#define POSTERN_HTML_TEXT_H

#include <stddef.h>

/* Initialises libxml2's parser once; idempotent. */
void html_text_init(void);

/*
 * Converts len bytes of UTF-8 HTML to text: script, style, head and
 * template are dropped; block elements start new lines, <br> breaks a
 * line, <li> starts "- ", a link whose target differs from its text gets
 * " <url>" after the text; whitespace collapses outside <pre>; entities
 * are decoded. Returned owned (free()), never NULL ("" for no text).
 */
char *html_text_convert(const char *html, size_t len);

#endif
