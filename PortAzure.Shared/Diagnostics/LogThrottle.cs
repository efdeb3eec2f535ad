using PortAzure.Time;

namespace PortAzure.Diagnostics;

/// <summary>
/// Lets a line through at most once per interval for each key, and counts the calls held back in between, so that
/// a client repeating a refused call in a loop cannot make the log (and its export) the flood.
/// </summary>
/// <remarks>Keys are a small fixed set (reasons, results): one window each is kept for good.</remarks>
internal sealed class LogThrottle(TimeProvider timeProvider, TimeSpan interval)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, (DateTimeOffset NextLineAt, long HeldBack)> _windows = new(StringComparer.Ordinal);

    /// <returns>
    /// 0 while the key's interval runs; otherwise how many calls the line stands for: this one and those held back
    /// since the key's last line.
    /// </returns>
    public long Take(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        lock (_gate)
        {
            var now = timeProvider.GetUtcNow();
            _windows.TryGetValue(key, out var window);
            if (WallClockPause.Runs(window.NextLineAt, now, interval))
            {
                _windows[key] = window with { HeldBack = window.HeldBack + 1 };
                return 0;
            }
            _windows[key] = (now + interval, 0);
            return window.HeldBack + 1;
        }
    }
}
