namespace PortAzure.Time;

/// <summary>Pauses that end at a moment of the wall clock (<see cref="TimeProvider.GetUtcNow"/>).</summary>
internal static class WallClockPause
{
    /// <summary>
    /// Whether a pause that ends at <paramref name="until"/> still runs at <paramref name="now"/>. A pause counts only
    /// while its end is at most its own longest length away: after the wall clock is stepped back, an end set before the
    /// step would otherwise hold for as long as the step (a report held for hours, a log line silent for hours).
    /// </summary>
    public static bool Runs(DateTimeOffset until, DateTimeOffset now, TimeSpan longest)
    {
        var left = until - now;
        return left > TimeSpan.Zero && left <= longest;
    }
}
