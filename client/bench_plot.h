// SVG charts for `sbctl bench --plot`, written directly (no plotting tool needed).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sbserve::client {

struct PlotSeries {
  std::string name;
  std::string color;                              // any SVG color, e.g. "#1f77b4"
  std::vector<std::pair<double, double>> points;  // (x, y), drawn as a polyline in x order
};

struct PlotPanel {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<PlotSeries> series;
};

// Empirical CDF of `values` as points (value, fraction <= value), thinned to at most
// `max_points` (the extremes are kept).
std::vector<std::pair<double, double>> CdfPoints(std::vector<double> values, size_t max_points = 400);

// One standalone SVG document: `title` above the panels laid out side by side. Panels without
// points show "no data".
std::string RenderSvg(const std::string& title, const std::vector<PlotPanel>& panels);

}  // namespace sbserve::client
