namespace PortAzure.Diagnostics;

/// <summary>An exception's messages, outer to inner, for one line of text.</summary>
public static class ExceptionMessages
{
    /// <summary>Each message of <paramref name="exception"/> and its inner exceptions once, joined by spaces.</summary>
    public static string Of(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        var messages = new List<string>();
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            if (!messages.Contains(e.Message, StringComparer.Ordinal))
            {
                messages.Add(e.Message);
            }
        }
        return string.Join(" ", messages);
    }
}
