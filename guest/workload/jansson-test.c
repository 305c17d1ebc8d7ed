/* Test program of the jansson workload: exercises parsing, building, packing/unpacking,
 * dumping and comparing, and checks the results. Exit status 0 means jansson works. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__); return 1; } } while (0)

int main(void)
{
    const char *text =
        "{\"name\": \"hvtrace\", \"values\": [1, 2, 3, 4.5, true, false, null],"
        " \"nested\": {\"k\": \"v\\u00e9\", \"deep\": [[[]], {}]}}";
    json_error_t err;
    json_t *root = json_loads(text, 0, &err);
    if (!root) {
        fprintf(stderr, "parse error at line %d: %s\n", err.line, err.text);
        return 1;
    }
    CHECK(json_is_object(root));
    CHECK(json_array_size(json_object_get(root, "values")) == 7);
    CHECK(strcmp(json_string_value(json_object_get(root, "name")), "hvtrace") == 0);

    json_t *built = json_pack("{s:i, s:s, s:[i,i,i], s:f}", "a", 42, "b", "text", "c", 1, 2, 3, "d", 0.25);
    CHECK(built != NULL);
    CHECK(json_object_set_new(root, "built", built) == 0);

    json_t *arr = json_array();
    for (int i = 0; i < 1000; i++)
        CHECK(json_array_append_new(arr, json_integer(i)) == 0);
    CHECK(json_object_set_new(root, "many", arr) == 0);

    char *out = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT);
    CHECK(out != NULL);
    json_t *again = json_loads(out, 0, &err);
    CHECK(again != NULL);
    CHECK(json_equal(root, again));

    int a = 0;
    const char *b = NULL;
    double d = 0;
    CHECK(json_unpack(again, "{s:{s:i, s:s, s:f}}", "built", "a", &a, "b", &b, "d", &d) == 0);
    CHECK(a == 42 && strcmp(b, "text") == 0 && d == 0.25);

    long long sum = 0;
    size_t idx;
    json_t *v;
    json_array_foreach(json_object_get(again, "many"), idx, v) sum += json_integer_value(v);
    CHECK(sum == 999LL * 1000 / 2);

    printf("%s\n", out);
    free(out);
    json_decref(again);
    json_decref(root);
    return 0;
}
