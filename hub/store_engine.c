/* store_engine.c - see store_int.h. */
#include "store_int.h"

/* Schema: see store.c's migration list. */
const char store_sql_engine[] = "";
