"""HTML pages of the pipeline's results, written from the stages' OUTPUT FILES (so a stage
needs one call, and the pages can be rebuilt from any old run's outputs):

* review_page.write(review_dir, prepared_dir, out): metrics/review/index.html, the label
  review to look at (thumbnails, given -> suggested, near-duplicate pairs, outliers, filters,
  Keep / Drop / Relabel controls that export data/corrections.csv rows).
* results_page.write(eval_dir, prepared_dir, out, facts=...): metrics/eval/index.html.
* serve.serve(...): `folderfit review --serve`, the review page on 127.0.0.1 with a token,
  writing decisions straight into data/corrections.csv.

Every page is one self-contained HTML file (thumbnails inlined as base64 JPEG, no network,
no external script) that opens from disk and works as a CI artifact.
"""
