// the console's one script (the CSP allows no inline script): behaviour by data- attributes
"use strict";
