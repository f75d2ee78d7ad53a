/*
 * test_status_page.c — the status page's Content-Security-Policy
 * (status_page_csp): the SHA-256 of its one script and one style block, in
 * CSP's base64 form, and a refusal when either block is missing; and the
 * page compiled in by the Makefile (status_page.h).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "status_page.h"
#include "check_run.h"

#define POLICY(script, style)                                                  \
    "default-src 'none'; script-src 'sha256-" script "'; style-src 'sha256-"  \
    style "'; connect-src 'self'; img-src data:; base-uri 'none'; "          \
    "form-action 'none'; frame-ancestors 'none'"

static int csp_of(const char *page, char *buf, size_t len)
{
    return status_page_csp((const unsigned char *)page, strlen(page), buf, len);
}

/* Digests from `printf %s TEXT | openssl dgst -sha256 -binary | base64`. */
START_TEST(the_policy_names_the_digest_of_each_block)
{
    char csp[512];

    ck_assert_int_eq(csp_of("<p>a</p><style>x</style><p><script>alert(1)</script>",
                            csp, sizeof(csp)), 0);
    ck_assert_str_eq(csp, POLICY("bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=",
                                 "LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE="));
    ck_assert_int_eq(csp_of("<script></script><style></style>", csp, sizeof(csp)), 0);
    ck_assert_str_eq(csp, POLICY("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
                                 "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="));
}
END_TEST

START_TEST(a_page_without_both_blocks_is_refused)
{
    char csp[512];

    ck_assert_int_eq(csp_of("<style>x</style>", csp, sizeof(csp)), -1);
    ck_assert_int_eq(csp_of("<script>x</script>", csp, sizeof(csp)), -1);
    ck_assert_int_eq(csp_of("<style>x</style><script>x", csp, sizeof(csp)), -1);
    ck_assert_int_eq(csp_of("<style>x<script>x</script>", csp, sizeof(csp)), -1);
    ck_assert_int_eq(csp_of("", csp, sizeof(csp)), -1);
    /* A tag with attributes is not the block the policy can name. */
    ck_assert_int_eq(csp_of("<style>x</style><script src=/a.js></script>", csp,
                            sizeof(csp)), -1);
}
END_TEST

START_TEST(a_short_buffer_is_refused)
{
    char csp[64];

    ck_assert_int_eq(csp_of("<style>x</style><script>x</script>", csp, sizeof(csp)), -1);
}
END_TEST

/* The page served: one script and one style block (what the policy's
 * digests cover), NUL after its bytes, no reference to another origin. */
START_TEST(the_embedded_page_has_one_script_and_one_style)
{
    const char *page = (const char *)status_page_html;
    char csp[512];

    ck_assert_uint_gt(status_page_html_len, 1000);
    ck_assert_uint_eq(strlen(page), status_page_html_len);
    ck_assert_int_eq(status_page_csp(status_page_html, status_page_html_len, csp,
                                     sizeof(csp)), 0);
    const char *script = strstr(page, "<script>"), *style = strstr(page, "<style>");
    ck_assert_ptr_nonnull(script);
    ck_assert_ptr_nonnull(style);
    ck_assert_ptr_null(strstr(script + 1, "<script"));
    ck_assert_ptr_null(strstr(style + 1, "<style"));
    ck_assert_ptr_null(strstr(page, "http://"));
    ck_assert_ptr_null(strstr(page, "https://"));
    ck_assert_ptr_null(strstr(page, "innerHTML"));
}
END_TEST

static Suite *status_page_suite(void)
{
    Suite *s = suite_create("status_page");
    TCase *tc = tcase_create("csp");

    tcase_add_test(tc, the_policy_names_the_digest_of_each_block);
    tcase_add_test(tc, a_page_without_both_blocks_is_refused);
    tcase_add_test(tc, a_short_buffer_is_refused);
    tcase_add_test(tc, the_embedded_page_has_one_script_and_one_style);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(status_page_suite());
}
