#include "client/bench_plot.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sbserve::client {
namespace {

constexpr double kPanelW = 440;
constexpr double kPanelH = 330;
constexpr double kTitleH = 34;
// Plot area inside a panel.
constexpr double kLeft = 64;
constexpr double kRight = 16;
constexpr double kTop = 30;
constexpr double kBottom = 48;

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A tick step of 1, 2 or 5 times a power of ten giving about five ticks over `range`.
double NiceStep(double range) {
  if (!(range > 0) || !std::isfinite(range)) return 1;
  const double raw = range / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (raw <= m * mag) return m * mag;
  }
  return 10 * mag;
}

std::string Num(double v) {
  if (std::fabs(v) < 1e-12) return "0";
  return absl::StrFormat("%g", v);
}

void RenderPanel(const PlotPanel& p, double ox, double oy, std::string* svg) {
  const double w = kPanelW - kLeft - kRight;
  const double h = kPanelH - kTop - kBottom;
  const double x0 = ox + kLeft;
  const double y0 = oy + kTop;
  absl::StrAppendFormat(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">%s</text>\n",
                        ox + kPanelW / 2, oy + 18, Escape(p.title));
  absl::StrAppendFormat(svg, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n",
                        x0, y0, w, h);
  double xmin = 0, xmax = 0, ymin = 0, ymax = 0;
  bool any = false;
  for (const PlotSeries& s : p.series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      if (!any) {
        xmin = xmax = x;
        ymin = ymax = y;
        any = true;
      }
      xmin = std::min(xmin, x);
      xmax = std::max(xmax, x);
      ymin = std::min(ymin, y);
      ymax = std::max(ymax, y);
    }
  }
  if (!any) {
    absl::StrAppendFormat(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n",
                          x0 + w / 2, y0 + h / 2);
    return;
  }
  // Latencies, fractions and rates all start at zero.
  xmin = std::min(xmin, 0.0);
  ymin = std::min(ymin, 0.0);
  const double xstep = NiceStep(xmax - xmin);
  const double ystep = NiceStep(ymax - ymin);
  xmax = std::max(xmin + xstep, std::ceil(xmax / xstep) * xstep);
  ymax = std::max(ymin + ystep, std::ceil(ymax / ystep) * ystep);
  auto px = [&](double x) { return x0 + (x - xmin) / (xmax - xmin) * w; };
  auto py = [&](double y) { return y0 + h - (y - ymin) / (ymax - ymin) * h; };
  for (double t = std::ceil(xmin / xstep) * xstep; t <= xmax + xstep * 1e-6; t += xstep) {
    absl::StrAppendFormat(svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n",
                          px(t), y0, px(t), y0 + h, px(t), y0 + h + 15, Num(t));
  }
  for (double t = std::ceil(ymin / ystep) * ystep; t <= ymax + ystep * 1e-6; t += ystep) {
    absl::StrAppendFormat(svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n",
                          x0, py(t), x0 + w, py(t), x0 - 5, py(t) + 4, Num(t));
  }
  absl::StrAppendFormat(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\">%s</text>\n",
                        x0 + w / 2, oy + kPanelH - 10, Escape(p.x_label));
  absl::StrAppendFormat(svg,
                        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" "
                        "transform=\"rotate(-90 %.1f %.1f)\">%s</text>\n",
                        ox + 16, y0 + h / 2, ox + 16, y0 + h / 2, Escape(p.y_label));
  double legend_y = y0 + 14;
  for (const PlotSeries& s : p.series) {
    std::string pts;
    for (const auto& [x, y] : s.points) {
      if (std::isfinite(x) && std::isfinite(y)) absl::StrAppendFormat(&pts, "%.1f,%.1f ", px(x), py(y));
    }
    absl::StrAppendFormat(svg, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\" points=\"%s\"/>\n",
                          Escape(s.color), pts);
    if (p.series.size() > 1 && !s.name.empty()) {  // one series: the panel title names it
      absl::StrAppendFormat(svg,
                            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
                            "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">%s</text>\n",
                            x0 + w - 110, legend_y - 4, x0 + w - 92, legend_y - 4, Escape(s.color), x0 + w - 88,
                            legend_y, Escape(s.name));
      legend_y += 15;
    }
  }
}

}  // namespace

std::vector<std::pair<double, double>> CdfPoints(std::vector<double> values, size_t max_points) {
  std::vector<std::pair<double, double>> out;
  if (values.empty()) return out;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  const size_t stride = std::max<size_t>(1, n / std::max<size_t>(max_points, 2));
  out.emplace_back(values[0], 0.0);
  for (size_t i = 0; i < n; i += stride) out.emplace_back(values[i], static_cast<double>(i + 1) / n);
  if (out.back().second < 1.0) out.emplace_back(values[n - 1], 1.0);
  return out;
}

std::string RenderSvg(const std::string& title, const std::vector<PlotPanel>& panels) {
  const double width = kPanelW * static_cast<double>(std::max<size_t>(panels.size(), 1));
  const double height = kPanelH + kTitleH;
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"sans-serif\" font-size=\"13\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.1f\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">%s</text>\n",
      width, height, width, height, width / 2, Escape(title));
  for (size_t i = 0; i < panels.size(); ++i) {
    absl::StrAppend(&svg, "<g>\n");
    RenderPanel(panels[i], kPanelW * static_cast<double>(i), kTitleH, &svg);
    absl::StrAppend(&svg, "</g>\n");
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace sbserve::client
