/* The run page's script, inlined into the page: the epoch selector, sortable tables, live refresh.
   Reads the page's JSON (#report-data), each epoch's tables from <epoch>/report_data.js and the class
   distribution from report_dataset.js, each loaded with a script element (works from file://, where
   fetch does not). Text goes in with textContent
   only, never as HTML. */
(function () {
  "use strict";
  var page = JSON.parse(document.getElementById("report-data").textContent);
  var tables = {}, waiting = {}, shown = null;

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function numeric(value) {
    var x = parseFloat(value);
    return isNaN(x) ? null : x;
  }

  /* A sortable table of `spec` ({columns: [{name, number}], rows, footer}) in `holder`, showing at
     most `limit` rows; a click on a header sorts by that column (again: the other way). */
  function dataTable(holder, spec, limit, note) {
    holder.textContent = "";
    var order = spec.rows.map(function (row, i) { return i; });
    var sortBy = null, descending = false;
    var table = el("table", null, "data");
    var head = el("thead"), headRow = el("tr"), body = el("tbody");
    spec.columns.forEach(function (column, c) {
      var th = el("th", column.name, column.number ? "num" : "");
      th.addEventListener("click", function () {
        descending = sortBy === c ? !descending : false;
        sortBy = c;
        sortRows(c, column.number, descending);
        Array.prototype.forEach.call(headRow.children, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        fill();
      });
      headRow.appendChild(th);
    });
    head.appendChild(headRow);
    table.appendChild(head);
    table.appendChild(body);
    if (spec.footer && spec.footer.length) {
      var foot = el("tfoot");
      spec.footer.forEach(function (row) { foot.appendChild(rowOf(row)); });
      table.appendChild(foot);
    }
    function rowOf(row) {
      var tr = el("tr");
      row.forEach(function (cell, c) {
        var td = el("td", cell, spec.columns[c].number ? "num" : "");
        if (spec.columns[c].bar && numeric(cell) !== null) {
          var bar = el("span", null, numeric(cell) > 1 ? "bar over" : "bar");
          bar.style.width = Math.min(120, Math.round(60 * numeric(cell))) + "px";
          td.appendChild(document.createTextNode(" "));
          td.appendChild(bar);
        }
        tr.appendChild(td);
      });
      return tr;
    }
    function sortRows(c, isNumber, down) {
      order.sort(function (a, b) {
        var x = spec.rows[a][c], y = spec.rows[b][c], r;
        if (isNumber) {
          x = numeric(x); y = numeric(y);
          if (x === null || y === null) return (x === null) - (y === null);  // blanks last, either way
          r = x - y;
        } else {
          r = x < y ? -1 : (x > y ? 1 : 0);
        }
        return down ? -r : r;
      });
    }
    function fill() {
      body.textContent = "";
      order.slice(0, limit).forEach(function (i) { body.appendChild(rowOf(spec.rows[i])); });
    }
    fill();
    if (spec.rows.length > limit) {
      holder.appendChild(el("p", "Showing " + limit.toLocaleString("en") + " of " +
        spec.rows.length.toLocaleString("en") + " rows in the chosen order (sort by a column to see others)" +
        (note ? "; all of them in " + note : "") + ".", "note"));
    }
    holder.appendChild(table);
  }

  function figures(entry) {
    var holder = document.getElementById("epoch-figures");
    holder.textContent = "";
    entry.figures.forEach(function (figure) {
      var box = el("figure"), link = el("a"), img = el("img");
      link.href = figure.src;  // the full-size image
      img.src = figure.src;
      img.alt = figure.caption;
      link.appendChild(img);
      box.appendChild(link);
      box.appendChild(el("figcaption", figure.caption));
      holder.appendChild(box);
    });
    if (!entry.figures.length) holder.appendChild(el("p", "No figures for this epoch yet.", "note"));
  }

  function showTables(epoch) {
    var found = tables[epoch], entry = page.epochs.filter(function (e) { return e.epoch === epoch; })[0];
    var perClass = document.getElementById("per-class"), confusions = document.getElementById("confusions"),
        sampler = document.getElementById("sampler");
    if (!found) {
      [perClass, confusions, sampler].forEach(function (h) {
        h.textContent = "";
        h.appendChild(el("p", "No tables for this epoch.", "note"));
      });
    } else {
      dataTable(perClass, found.per_class, page.max_rows, entry.folder + "/per_class_metrics.csv");
      dataTable(confusions, found.confusions, page.max_rows, entry.folder + "/top_confusions.csv");
      if (found.confusions.total > found.confusions.rows.length) {
        confusions.insertBefore(el("p", "The " + found.confusions.rows.length + " largest of " +
          found.confusions.total.toLocaleString("en") + " confused pairs; all in " + entry.folder +
          "/top_confusions.csv.", "note"), confusions.firstChild);
      }
      if (found.sampler) {
        dataTable(sampler, found.sampler, page.max_rows, entry.folder + "/sampler_distribution.json");
        sampler.insertBefore(el("p", found.sampler.draws.toLocaleString("en") +
          " draws this epoch; ratio = sampled / expected from the sampler's weights.", "note"), sampler.firstChild);
      } else {
        sampler.textContent = "";
        sampler.appendChild(el("p", "No TrackingWeightedRandomSampler draws for this epoch.", "note"));
      }
    }
    document.body.setAttribute("data-shown-epoch", String(epoch));
  }

  window.reportEpoch = function (data) {
    tables[data.epoch] = data;
    if (data.epoch === shown) showTables(data.epoch);
  };

  function show(epoch, first) {
    var entry = page.epochs.filter(function (e) { return e.epoch === epoch; })[0];
    if (!entry) return;
    shown = epoch;
    if (!first) figures(entry);
    var links = document.getElementById("epoch-links");
    links.textContent = "";
    entry.files.forEach(function (file, i) {
      if (i) links.appendChild(document.createTextNode(" \u00b7 "));
      var a = el("a", file.name);
      a.href = file.src;
      links.appendChild(a);
    });
    if (tables[epoch] || !entry.data) {
      showTables(epoch);
    } else if (!waiting[epoch]) {
      waiting[epoch] = true;
      var script = el("script");
      script.src = entry.data;
      document.head.appendChild(script);
    }
    if (!first) history.replaceState(null, "", "#epoch=" + epoch);
  }

  var select = document.getElementById("epoch-select");
  if (select) {
    var wanted = /^#epoch=(\d+)$/.exec(location.hash);
    var start = wanted && page.epochs.some(function (e) { return e.epoch === +wanted[1]; }) ? +wanted[1] : +select.value;
    select.value = String(start);
    show(start, start === page.selected);
    select.addEventListener("change", function () { show(+select.value, false); });
  }
  window.reportDataset = function (table) {
    dataTable(document.getElementById("dataset"), table, page.max_rows, "dataset_statistics.json");
  };
  if (page.dataset) {
    var script = el("script");
    script.src = page.dataset;
    document.head.appendChild(script);
  }
  if (page.live) setTimeout(function () { location.reload(); }, page.refresh_s * 1000);
})();
