using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// Captures every log line (message, scope values, exception) the host's filters let through, each prefixed
/// with its level, so that the no-secrets check also covers the lines a deployment keeps at Debug.
/// </summary>
public sealed class LogSink : ILoggerProvider
{
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly ConcurrentQueue<(string Line, string? TraceId)> _traced = new();

    public IReadOnlyCollection<string> Lines => _lines;

    /// <summary>The lines with the trace id of the span they were written in (<see cref="Activity.Current"/>), if any.</summary>
    public IReadOnlyCollection<(string Line, string? TraceId)> TracedLines => _traced;

    public ILogger CreateLogger(string categoryName) => new SinkLogger(this, categoryName);

    public void Dispose()
    {
    }

    /// <summary>Fails when any captured line contains one of the forbidden strings.</summary>
    public void AssertNoneContain(IEnumerable<string> forbidden)
    {
        foreach (var value in forbidden.Where(v => !string.IsNullOrEmpty(v)))
        {
            var offending = _lines.FirstOrDefault(l => l.Contains(value, StringComparison.Ordinal));
            Assert.True(offending is null, $"A log line reveals '{value}': {offending}");
        }
    }

    private sealed class SinkLogger(LogSink sink, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull
        {
            sink._lines.Enqueue($"[scope] {category}: {Describe(state)}");
            return null;
        }

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel))
            {
                return;
            }
            var line = $"{logLevel} {category}[{eventId.Id}]: {formatter(state, exception)} {Describe(state)} {exception}";
            sink._lines.Enqueue(line);
            sink._traced.Enqueue((line, Activity.Current?.TraceId.ToHexString()));
        }

        // A value that is a list (HttpClient's header values) is written out: an exporter (OTLP) sends its items, and as
        // "System.String[]" the no-secrets check could not see them.
        private static string Describe<TState>(TState state) => state is IEnumerable<KeyValuePair<string, object?>> pairs
            ? string.Join(", ", pairs.Select(p => $"{p.Key}={ValueOf(p.Value)}"))
            : state?.ToString() ?? "";

        private static string? ValueOf(object? value) => value is System.Collections.IEnumerable items and not string
            ? "[" + string.Join(", ", items.Cast<object?>()) + "]"
            : value?.ToString();
    }
}
